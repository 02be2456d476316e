import ArgumentParser
import FerryClient
import FerryCore
import FerryProtocol
import Foundation

/// How to reach ferryd. Each setting comes from its flag, else its environment variable, else
/// the chosen context of the config file, else the default.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("context"), help: ArgumentHelp(
        "Context of the config file to use (see `ferry config`). Env: FERRY_CONTEXT. Default: the file's current context.",
        valueName: "name"))
    var context: String?

    @Option(name: .customLong("address"), help: ArgumentHelp(
        "host:port of ferryd's RPC server; repeat it (or separate with commas) to name several replicas, tried in turn. Env: FERRY_ADDRESS. Default 127.0.0.1:7443.",
        valueName: "host:port"))
    var addresses: [String] = []

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

    @Option(name: .customLong("timeout"), help: ArgumentHelp(
        "Seconds each call may take (a watch is not bounded). Env: FERRY_TIMEOUT. Default 30.", valueName: "seconds"))
    var timeout: Double?

    /// The per-call deadline: `--timeout`, else FERRY_TIMEOUT, else 30 s.
    func callDuration() throws -> Duration {
        var seconds = 30.0
        if let timeout {
            seconds = timeout
        } else if let text = ProcessInfo.processInfo.environment["FERRY_TIMEOUT"], !text.isEmpty {
            guard let value = Double(text) else { throw CLIError.usage("invalid FERRY_TIMEOUT '\(text)': expected seconds, e.g. 30") }
            seconds = value
        }
        guard seconds.isFinite, seconds > 0, seconds <= 86400 else {
            throw CLIError.usage("invalid timeout \(seconds): expected seconds between 0 and 86400")
        }
        return .milliseconds(Int64(seconds * 1000))
    }

    /// The per-call deadline (validated when the client was configured).
    var callTimeout: Duration { (try? callDuration()) ?? .seconds(30) }

    func clientConfiguration() throws -> FerryClientConfiguration {
        let environment = ProcessInfo.processInfo.environment
        // An explicit --context is the whole answer to "where and as whom": FERRY_* connection
        // variables (perhaps exported for another server) do not mix into it; flags still do.
        let contextChosen = context != nil
        func variable(_ name: String) -> String? {
            guard !contextChosen else { return nil }
            return environment[name].flatMap { $0.isEmpty ? nil : $0 }
        }
        let callTimeout = try callDuration()
        var addressTexts = addresses.flatMap { $0.split(separator: ",").map(String.init) }
        if addressTexts.isEmpty, let text = variable("FERRY_ADDRESS") { addressTexts = text.split(separator: ",").map(String.init) }
        var token = variable("FERRY_TOKEN")
        var tokenFile = self.tokenFile ?? variable("FERRY_TOKEN_FILE")
        var caFile = self.caFile ?? variable("FERRY_CA_FILE")
        var serverName = self.serverName ?? variable("FERRY_SERVER_NAME")
        var clientCertificate = self.clientCertificate ?? variable("FERRY_CLIENT_CERT")
        var clientKey = self.clientKey ?? variable("FERRY_CLIENT_KEY")

        // The config file is read only when it is named or something is still missing, so a
        // broken file does not stop a command that gives everything itself.
        let contextName = context ?? environment["FERRY_CONTEXT"].flatMap { $0.isEmpty ? nil : $0 }
        if contextName != nil || addressTexts.isEmpty || caFile == nil || (token == nil && tokenFile == nil) {
            let saved = try ConfigFile.load()
            if let name = contextName ?? saved.file.currentContext {
                guard let chosen = saved.file.contexts[name] else {
                    throw CLIError.usage("no context '\(name)' in \(saved.path); `ferry config get-contexts` lists them, `ferry config set-context \(name) --address …` makes it")
                }
                if addressTexts.isEmpty { addressTexts = chosen.addresses }
                if token == nil, tokenFile == nil { tokenFile = chosen.tokenFile }
                caFile = caFile ?? chosen.caFile
                serverName = serverName ?? chosen.serverName
                clientCertificate = clientCertificate ?? chosen.clientCert
                clientKey = clientKey ?? chosen.clientKey
            }
        }
        if addressTexts.isEmpty { addressTexts = ["127.0.0.1:7443"] }
        let parsed = try addressTexts.map { text in
            do { return try FerryAddress(parsing: text.trimmingCharacters(in: .whitespaces)) } catch {
                throw CLIError.usage("invalid address '\(text)': expected host:port, e.g. 127.0.0.1:7443")
            }
        }
        if let file = tokenFile {
            guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
                throw CLIError.usage("cannot read the token file \(file)")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        var configuration = FerryClientConfiguration(addresses: parsed, trustRootsFile: caFile, token: token.flatMap { $0.isEmpty ? nil : $0 })
        configuration.serverName = serverName
        configuration.clientCertificateFile = clientCertificate
        configuration.clientKeyFile = clientKey
        // A connection attempt never outlasts the call it is for.
        configuration.connectTimeout = min(configuration.connectTimeout, callTimeout)
        do {
            try configuration.validate()
        } catch let error as RPCError {
            throw CLIError.usage(error.message)
        }
        return configuration
    }

    /// A client that has reached one of the addresses (so "cannot reach" is reported here).
    func connect() async throws -> FerryClient {
        try await FerryClient.connect(try clientConfiguration())
    }

    /// One connection to the first address, never replaced: the benchmarks measure one server.
    func connectDirect() async throws -> FerryConnection {
        try await FerryConnection.connect(try clientConfiguration())
    }
}

/// The CLI's config file: named contexts (where and as whom to connect), one of them current,
/// as kubectl's kubeconfig. It holds file paths, never a token.
struct ConfigFile: Codable {
    struct Context: Codable {
        var addresses: [String] = []
        var caFile: String?
        var tokenFile: String?
        var serverName: String?
        var clientCert: String?
        var clientKey: String?
    }

    var currentContext: String?
    var contexts: [String: Context] = [:]

    /// `$FERRY_CONFIG`, else `$XDG_CONFIG_HOME/ferry/config.json`, else `~/.config/ferry/config.json`.
    static var path: String {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["FERRY_CONFIG"], !path.isEmpty { return path }
        if let xdg = environment["XDG_CONFIG_HOME"], !xdg.isEmpty { return xdg + "/ferry/config.json" }
        return FileManager.default.homeDirectoryForCurrentUser.path + "/.config/ferry/config.json"
    }

    /// The file, or an empty one when it does not exist.
    static func load() throws -> (file: ConfigFile, path: String) {
        let path = Self.path
        guard let data = FileManager.default.contents(atPath: path) else { return (ConfigFile(), path) }
        do {
            return (try JSONDecoder().decode(ConfigFile.self, from: data), path)
        } catch {
            throw CLIError.usage("the config file \(path) is not valid: \(error)")
        }
    }

    /// Writes the file (through a symlink to its target), readable by its owner alone, since
    /// it says where the owner's credentials are.
    func save(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let target = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        let directory = (target as NSString).deletingLastPathComponent
        do {
            if !directory.isEmpty { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
            try encoder.encode(self).write(to: URL(fileURLWithPath: target), options: .atomic)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: target)
        } catch {
            throw CLIError("cannot write the config file \(target): \(error.localizedDescription)")
        }
    }
}
