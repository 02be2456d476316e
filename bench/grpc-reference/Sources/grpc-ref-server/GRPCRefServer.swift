import ArgumentParser
import FerryHealthGRPC
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2

/// `grpc-ref-server`: ferry.v1.Health/Check served by grpc-swift-2 over HTTP/2 + TLS (NIOPosix,
/// on NIO's singleton event loop group, as ferryd's RPC listener is), for `scripts/bench-rpc`.
@main
struct GRPCRefServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "grpc-ref-server",
        abstract: "Serve ferry.v1.Health/Check with grpc-swift-2 over HTTP/2 + TLS until SIGTERM or SIGINT.")

    @Option(help: "Address to listen on.")
    var host: String = "127.0.0.1"

    @Option(help: "Port to listen on (0: any free port; see --ready-file).")
    var port: Int = 0

    @Option(help: ArgumentHelp("The server's certificate chain (PEM).", valueName: "file"))
    var cert: String

    @Option(help: ArgumentHelp("The certificate's private key (PEM).", valueName: "file"))
    var key: String

    @Option(name: .customLong("ready-file"), help: ArgumentHelp(
        "Written once listening: the bound port and a newline (written to a temporary name, then renamed).",
        valueName: "file"))
    var readyFile: String?

    func validate() throws {
        for (what, path) in [("certificate", cert), ("key", key)] where !FileManager.default.isReadableFile(atPath: path) {
            throw ValidationError("cannot read the \(what) file \(path)")
        }
    }

    func run() async throws {
        let server = GRPCServer(
            transport: .http2NIOPosix(
                address: .ipv4(host: host, port: port),
                transportSecurity: .tls(
                    certificateChain: [.file(path: cert, format: .pem)],
                    privateKey: .file(path: key, format: .pem))),
            services: [FerryHealthService()])

        // SIGTERM/SIGINT: stop accepting, let open calls finish, then return. A client that
        // keeps its connection open does not hold the server up for more than 10 s.
        let signals = ([SIGTERM, SIGINT] as [Int32]).map { number -> any DispatchSourceSignal in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                server.beginGracefulShutdown()
                DispatchQueue.global().asyncAfter(deadline: .now() + 10) {
                    FileHandle.standardError.write(Data("grpc-ref-server: connections still open 10 s after the signal; exiting\n".utf8))
                    Foundation.exit(0)
                }
            }
            source.resume()
            return source
        }
        defer { signals.forEach { $0.cancel() } }

        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await server.serve() }
            guard let address = try await server.listeningAddress?.ipv4 else {
                throw ValidationError("the server is not listening on an IPv4 address")
            }
            if let readyFile {
                let temporary = readyFile + ".tmp"
                try Data("\(address.port)\n".utf8).write(to: URL(fileURLWithPath: temporary))
                guard rename(temporary, readyFile) == 0 else {
                    throw ValidationError("cannot rename \(temporary) to \(readyFile): \(String(cString: strerror(errno)))")
                }
            }
            FileHandle.standardError.write(Data("grpc-ref-server: listening on \(address.host):\(address.port) (pid \(getpid()))\n".utf8))
        }
    }
}
