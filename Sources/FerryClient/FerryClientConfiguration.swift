import FerryCore
import FerryProtocol
import Foundation
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
    /// While calls are open, a ping every this often (nil: never); a connection whose ping
    /// has no answer within `keepaliveTimeout` is closed, and its calls fail UNAVAILABLE (a
    /// ``FerryClient`` then reconnects and a watch resumes).
    public var keepaliveInterval: Duration? = .seconds(15)
    public var keepaliveTimeout: Duration = .seconds(10)

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

extension FerryClientConfiguration {
    /// The TLS settings as NIOSSL wants them; files that cannot be read or hold no PEM say so
    /// here, as INVALID_ARGUMENT naming the file, before anything is dialled.
    func makeTLSContext() throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.applicationProtocols = ["ferry/1"]
        if let roots = trustRoots {
            tls.trustRoots = .certificates(roots)
        } else if let file = trustRootsFile {
            tls.trustRoots = .certificates(try Self.certificates(file, what: "CA file"))
        }
        switch (clientCertificateFile, clientKeyFile) {
        case (let certificate?, let key?):
            tls.certificateChain = try Self.certificates(certificate, what: "client certificate").map { .certificate($0) }
            do {
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            } catch {
                throw RPCError(.invalidArgument, "cannot read a PEM private key from the client key file \(key): \(error)")
            }
        case (nil, nil):
            break
        default:
            throw RPCError(.invalidArgument, "a client certificate needs its key, and a key its certificate: give both (clientCertificateFile and clientKeyFile)")
        }
        do {
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw RPCError(.invalidArgument, "the TLS settings are not usable: \(error)")
        }
    }

    /// Checks the TLS files (readable, PEM) without connecting.
    public func validate() throws {
        _ = try makeTLSContext()
    }

    private static func certificates(_ file: String, what: String) throws -> [NIOSSLCertificate] {
        guard FileManager.default.isReadableFile(atPath: file) else {
            throw RPCError(.invalidArgument, "cannot read the \(what) \(file)")
        }
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(file)
        } catch {
            throw RPCError(.invalidArgument, "the \(what) \(file) holds no PEM certificate: \(error)")
        }
        guard !certificates.isEmpty else { throw RPCError(.invalidArgument, "the \(what) \(file) holds no PEM certificate") }
        return certificates
    }
}
