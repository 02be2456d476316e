import FerryCore
import FerryProtocol
import NIOSSL

/// One `ferryd` RPC address.
public struct FerryAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` (an IPv6 host in brackets, `[::1]:7443`).
    public init(parsing text: String) throws {
        guard let (host, port) = parseHostPort(text, ports: 1...65535) else {
            throw RPCError(.invalidArgument, "invalid address '\(text)': expected host:port")
        }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Where and how to reach `ferryd`: one or more addresses (replicas sharing one control
/// database), what to trust, and who the caller is.
public struct FerryClientConfiguration: Sendable {
    /// The first address tried.
    public var host: String
    public var port: Int
    /// More replicas: ``FerryClient`` moves to the next address when one cannot be reached
    /// or goes away.
    public var fallbackAddresses: [FerryAddress] = []
    /// PEM file of the CA (or the self-signed server certificate) to trust.
    public var trustRootsFile: String?
    /// Trust these instead of a file; with neither, the system's roots are used.
    public var trustRoots: [NIOSSLCertificate]?
    /// The name the server certificate must carry (default: the host connected to).
    public var serverName: String?
    /// Client certificate and key (PEM files) for servers that require mTLS.
    public var clientCertificateFile: String?
    public var clientKeyFile: String?
    /// Bearer token sent as `authorization` metadata with every call.
    public var token: String?
    public var maxFrameBytes: Int = 4 * 1024 * 1024
    public var connectTimeout: Duration = .seconds(10)
    /// How long ``FerryClient`` keeps trying to reach some address before a call or a watch
    /// fails UNAVAILABLE (it waits with growing pauses between rounds of all addresses).
    public var reconnectTimeout: Duration = .seconds(30)

    public init(host: String, port: Int, trustRootsFile: String? = nil, token: String? = nil) {
        self.host = host
        self.port = port
        self.trustRootsFile = trustRootsFile
        self.token = token
    }

    /// A configuration for these addresses, tried in order (at least one).
    public init(addresses: [FerryAddress], trustRootsFile: String? = nil, token: String? = nil) {
        precondition(!addresses.isEmpty, "a FerryClientConfiguration needs at least one address")
        self.init(host: addresses[0].host, port: addresses[0].port, trustRootsFile: trustRootsFile, token: token)
        fallbackAddresses = Array(addresses.dropFirst())
    }

    /// The first address.
    public var address: FerryAddress { FerryAddress(host: host, port: port) }

    /// Every address, in the order they are tried.
    public var addresses: [FerryAddress] { [address] + fallbackAddresses.filter { $0 != address } }
}
