import ArgumentParser
import FerryClient
import FerryCore
import Foundation

/// How to reach ferryd; every flag falls back to its environment variable.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("address"), help: ArgumentHelp(
        "host:port of ferryd's RPC server. Env: FERRY_ADDRESS. Default 127.0.0.1:7443.", valueName: "host:port"))
    var address: String?

    @Option(name: .customLong("ca-file"), help: ArgumentHelp(
        "PEM file of the CA (or ferryd's self-signed certificate) to trust. Env: FERRY_CA_FILE. Default: the system's roots.",
        valueName: "file"))
    var caFile: String?

    @Option(name: .customLong("server-name"), help: ArgumentHelp(
        "Name the server certificate must carry (default: the host of --address). Env: FERRY_SERVER_NAME.", valueName: "name"))
    var serverName: String?

    @Option(name: .customLong("token-file"), help: ArgumentHelp(
        "File holding the bearer token. Env: FERRY_TOKEN_FILE; FERRY_TOKEN holds a token directly.", valueName: "file"))
    var tokenFile: String?

    @Option(name: .customLong("client-cert"), help: ArgumentHelp("PEM client certificate for mTLS. Env: FERRY_CLIENT_CERT.", valueName: "file"))
    var clientCertificate: String?

    @Option(name: .customLong("client-key"), help: ArgumentHelp("PEM key of --client-cert. Env: FERRY_CLIENT_KEY.", valueName: "file"))
    var clientKey: String?

    func clientConfiguration() throws -> FerryClientConfiguration {
        let environment = ProcessInfo.processInfo.environment
        func setting(_ flag: String?, _ variable: String) -> String? {
            flag ?? environment[variable].flatMap { $0.isEmpty ? nil : $0 }
        }
        let text = setting(address, "FERRY_ADDRESS") ?? "127.0.0.1:7443"
        guard let (host, port) = parseHostPort(text, ports: 1...65535) else {
            throw CLIError("invalid address '\(text)': expected host:port")
        }
        var token = environment["FERRY_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        if let file = setting(tokenFile, "FERRY_TOKEN_FILE") {
            guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
                throw CLIError("cannot read the token file \(file)")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        var configuration = FerryClientConfiguration(host: host, port: port, trustRootsFile: setting(caFile, "FERRY_CA_FILE"), token: token)
        if let file = configuration.trustRootsFile, !FileManager.default.isReadableFile(atPath: file) {
            throw CLIError("cannot read the CA file \(file)")
        }
        configuration.serverName = setting(serverName, "FERRY_SERVER_NAME")
        configuration.clientCertificateFile = setting(clientCertificate, "FERRY_CLIENT_CERT")
        configuration.clientKeyFile = setting(clientKey, "FERRY_CLIENT_KEY")
        return configuration
    }

    func connect() async throws -> FerryClient {
        try await FerryClient.connect(try clientConfiguration())
    }
}
