import NIOSSL

/// Listening address, TLS material and the limits of the ferry/1 server.
public struct RPCServerConfiguration: Sendable {
    public var host: String = "127.0.0.1"
    /// 0 picks a free port; the bound address is reported through `onBound`.
    public var port: Int = 7443
    /// PEM certificate chain and private key of the server.
    public var certificateChain: [NIOSSLCertificate]
    public var privateKey: NIOSSLPrivateKey
    /// When set, clients must present a certificate signed by one of these (mTLS).
    public var clientCertificateAuthorities: [NIOSSLCertificate]?
    /// Largest frame body accepted, in bytes (the protocol's default: 4 MiB, docs/protocol.md).
    public var maxFrameBytes: Int = 4 * 1024 * 1024
    /// Open streams per connection; a call beyond it ends with RESOURCE_EXHAUSTED.
    public var maxConcurrentStreams: Int = 128
    /// Bytes a connection may have handed to its socket and not yet written (the peer reads
    /// slowly). Writers wait above it; the read loop waits too, so a client that does not read
    /// stops being read. A connection holds at most this plus one frame outbound.
    public var outboundBufferBytes: Int = 256 * 1024
    /// Complete frames a connection buffers ahead of its read loop before it stops reading
    /// from the socket. With the partial frame being decoded, a connection holds at most
    /// this + 1 frames inbound.
    public var inboundFramesBuffered: Int = 2
    /// Open connections; one beyond it is sent `goaway` RESOURCE_EXHAUSTED and closed.
    public var maxConnections: Int = 1024
    /// A connection that has not finished its TLS handshake by then is closed.
    public var handshakeTimeout: Duration = .seconds(10)
    /// A connection with no open stream, or stuck in the middle of a frame, that sends
    /// nothing for this long is sent `goaway` UNAVAILABLE and closed.
    public var idleTimeout: Duration = .seconds(300)
    /// After `goaway`, how long streams in flight may take to finish before they are ended.
    public var drainTimeout: Duration = .seconds(30)

    public init(certificateChain: [NIOSSLCertificate], privateKey: NIOSSLPrivateKey) {
        self.certificateChain = certificateChain
        self.privateKey = privateKey
    }

    /// The server's TLS context. Start-up calls it once to refuse a key that does not match
    /// its certificate before listening.
    public func makeSSLContext() throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: certificateChain.map { .certificate($0) },
            privateKey: .privateKey(privateKey))
        tls.minimumTLSVersion = .tlsv12
        tls.applicationProtocols = ["ferry/1"]
        // How long a close waits for the peer's close_notify. A peer that never finished its
        // handshake (or stalls) would otherwise hold the socket 5 s past our decision to close.
        tls.shutdownTimeout = .seconds(1)
        if let authorities = clientCertificateAuthorities {
            tls.certificateVerification = .noHostnameVerification
            tls.trustRoots = .certificates(authorities)
        }
        return try NIOSSLContext(configuration: tls)
    }
}
