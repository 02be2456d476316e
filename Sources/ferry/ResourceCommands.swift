import ArgumentParser
import FerryClient
import FerryProtocol
import Foundation

// MARK: instances, tenants

struct Instances: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Register and list the PostgreSQL instances Ferry moves tenants between.",
        discussion: """
        Examples:
          ferry instances put eu-1 --dsn-file /run/secrets/eu-1.dsn
          ferry instances list
        """,
        subcommands: [InstancesPut.self, InstancesList.self])
}

struct InstancesPut: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "put",
        abstract: "Register an instance, or replace its DSN (needs role admin). The DSN is never printed or returned.",
        discussion: """
        Give the DSN in a file or a variable rather than on the command line, where
        other users of the machine can read it.

        Examples:
          ferry instances put eu-1 --dsn-file /run/secrets/eu-1.dsn
          EU2_DSN='postgres://ferry:secret@db-eu-2:5432/app' ferry instances put eu-2 --dsn-env EU2_DSN
        """)

    @Argument(help: "The instance's id, e.g. eu-1.") var id: String
    @Option(name: .customLong("dsn"), help: ArgumentHelp("The PostgreSQL connection string.", valueName: "dsn"))
    var dsn: String?
    @Option(name: .customLong("dsn-file"), help: ArgumentHelp("A file holding the connection string.", valueName: "file"))
    var dsnFile: String?
    @Option(name: .customLong("dsn-env"), help: ArgumentHelp("An environment variable holding the connection string.", valueName: "variable"))
    var dsnEnv: String?
    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func validate() throws {
        guard [dsn, dsnFile, dsnEnv].compactMap({ $0 }).count == 1 else {
            throw ValidationError("give the DSN exactly once: --dsn, --dsn-file or --dsn-env")
        }
    }

    func run() async throws {
        let value: String
        if let dsn {
            value = dsn
        } else if let dsnFile {
            guard let data = FileManager.default.contents(atPath: dsnFile), let text = String(data: data, encoding: .utf8) else {
                throw CLIError.usage("cannot read the DSN file \(dsnFile)")
            }
            value = text.trimmingCharacters(in: .whitespacesAndNewlines)
        } else {
            guard let name = dsnEnv, let text = ProcessInfo.processInfo.environment[name], !text.isEmpty else {
                throw CLIError.usage("the variable \(dsnEnv ?? "") is not set")
            }
            value = text
        }
        let client = try await connection.connect()
        defer { client.close() }
        let instance = try await client.putInstance(id: id, dsn: value, timeout: connection.callTimeout)
        if output.format == .json {
            try printJSON(instance)
        } else {
            print("instance \(instance.id) registered (DSN \(instance.hasPassword_p ? "with" : "without") a password)")
        }
    }
}

struct InstancesList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the registered instances.",
        discussion: """
        Examples:
          ferry instances list
          ferry instances list -o json
        """)

    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        let instances = try await client.listInstances(timeout: connection.callTimeout)
        if output.format == .json {
            try printJSON(ListInstancesResponse.with { $0.instances = instances })
            return
        }
        guard !instances.isEmpty else { return print("no instances; register one with `ferry instances put ID --dsn-file FILE`") }
        var table = TextTable(["INSTANCE", "PASSWORD", "REGISTERED", "DSN SET"])
        for instance in instances {
            table.add([instance.id, instance.hasPassword_p ? "yes" : "no", instance.createdAt.age + " ago", instance.updatedAt.age + " ago"])
        }
        table.print()
    }
}

struct Tenants: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the tenants (schemas) of an instance, one per line.",
        discussion: """
        Examples:
          ferry tenants eu-1
          ferry tenants eu-1 | wc -l
        """)

    @Argument(help: "The instance.") var instance: String
    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        let tenants = try await client.listTenants(instance: instance, timeout: connection.callTimeout)
        if output.format == .json {
            try printJSON(ListTenantsResponse.with { $0.tenants = tenants })
        } else {
            for tenant in tenants { print(tenant) }
        }
    }
}

// MARK: artifacts

struct Artifacts: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List, show and delete the archives export jobs wrote.",
        discussion: """
        Examples:
          ferry artifacts list --tenant acme
          ferry artifacts get 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70
          ferry artifacts delete 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70
        """,
        subcommands: [ArtifactsList.self, ArtifactsGet.self, ArtifactsDelete.self])
}

struct ArtifactsList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List artifacts, newest first.",
        discussion: """
        Examples:
          ferry artifacts list
          ferry artifacts list --instance eu-1 --tenant acme --include-expired
        """)

    @Option(name: .customLong("instance"), help: "Only artifacts exported from this instance.")
    var instance: String?
    @Option(name: .customLong("tenant"), help: "Only artifacts exported from this tenant.")
    var tenant: String?
    @Flag(name: .customLong("include-expired"), help: "Also list expired artifacts not deleted yet.")
    var includeExpired = false
    @OptionGroup var paging: PagingOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        var request = ListArtifactsRequest.with {
            $0.sourceInstance = instance ?? ""
            $0.sourceTenant = tenant ?? ""
            $0.includeExpired = includeExpired
            $0.pageSize = paging.limit
        }
        let client = try await connection.connect()
        defer { client.close() }
        let (pages, next) = try await paging.pages { token in
            request.pageToken = token
            let page = try await client.listArtifacts(request, timeout: connection.callTimeout)
            return (page, page.nextPageToken)
        }
        let response = ListArtifactsResponse.with {
            $0.artifacts = pages.flatMap(\.artifacts)
            $0.nextPageToken = next
        }
        if output.format == .json { return try printJSON(response) }
        guard !response.artifacts.isEmpty else { return print("no artifacts") }
        var table = TextTable(output.format == .wide ? ["ARTIFACT", "SOURCE", "TABLES", "ROWS", "SIZE", "CREATED", "EXPIRES", "JOB", "SHA256"]
                                                   : ["ARTIFACT", "SOURCE", "TABLES", "ROWS", "SIZE", "CREATED", "EXPIRES"])
        for artifact in response.artifacts {
            var row = [artifact.id, "\(artifact.sourceInstance)/\(artifact.sourceTenant)", "\(artifact.tables)", grouped(artifact.rows),
                       byteSize(artifact.sizeBytes), artifact.createdAt.age + " ago", expiry(artifact)]
            if output.format == .wide { row += [artifact.jobID, artifact.sha256] }
            table.add(row)
        }
        table.print()
        paging.mentionMore(next, command: "ferry artifacts list")
    }
}

/// "in 6d23h", or "expired 2h ago".
func expiry(_ artifact: Artifact) -> String {
    let left = artifact.expiresAt.seconds1970 - Date().timeIntervalSince1970
    return left >= 0 ? "in \(shortDuration(left))" : "expired \(shortDuration(-left)) ago"
}

struct ArtifactsGet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Show one artifact.",
        discussion: """
        Examples:
          ferry artifacts get 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70
        """)

    @Argument(help: "The artifact.") var artifact: String
    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        let found = try await client.getArtifact(artifact, timeout: connection.callTimeout)
        if output.format == .json { return try printJSON(found) }
        let lines: [(String, String)] = [
            ("Artifact", found.id), ("Source", "\(found.sourceInstance)/\(found.sourceTenant)"), ("Export job", found.jobID),
            ("Tables", "\(found.tables)"), ("Rows", grouped(found.rows)), ("Size", byteSize(found.sizeBytes)),
            ("SHA-256", found.sha256), ("Format", "version \(found.formatVersion)"),
            ("Created", "\(found.createdAt.rfc3339) (\(found.createdAt.age) ago)"), ("Expires", "\(found.expiresAt.rfc3339) (\(expiry(found)))"),
        ]
        print(keyValues(lines))
    }
}

struct ArtifactsDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Delete an artifact now: its files, then its record (needs role admin; refused while an import reads it).",
        discussion: """
        Examples:
          ferry artifacts delete 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70
        """)

    @Argument(help: "The artifact.") var artifact: String
    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        let deleted = try await client.deleteArtifact(artifact, timeout: connection.callTimeout)
        if output.format == .json { return try printJSON(deleted) }
        print("deleted artifact \(deleted.id) (\(deleted.sourceInstance)/\(deleted.sourceTenant), \(byteSize(deleted.sizeBytes)))")
    }
}

// MARK: config

struct Config: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Named contexts (where and as whom to connect) in the config file, as kubectl's.",
        discussion: """
        The file is $FERRY_CONFIG, else $XDG_CONFIG_HOME/ferry/config.json, else
        ~/.config/ferry/config.json. It stores file paths (CA, token, client
        certificate), never a token.

        Examples:
          ferry config set-context prod --address ferry-a:7443 --address ferry-b:7443 --ca-file /etc/ferry/ca.pem --token-file ~/.ferry/prod.token --use
          ferry config use-context staging
          ferry config get-contexts
        """,
        subcommands: [SetContext.self, UseContext.self, GetContexts.self, DeleteContext.self, ViewConfig.self])
}

/// A path as given, made absolute so the context works from any directory.
private func absolute(_ path: String?) -> String? {
    guard let path else { return nil }
    if path.hasPrefix("/") { return path }
    if path.hasPrefix("~/") { return FileManager.default.homeDirectoryForCurrentUser.path + path.dropFirst() }
    return FileManager.default.currentDirectoryPath + "/" + path
}

struct SetContext: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set-context",
        abstract: "Create or change a context; only the settings given are changed.",
        discussion: """
        Examples:
          ferry config set-context local --address 127.0.0.1:7443 --ca-file cert.pem --token-file admin.token --use
        """)

    @Argument(help: "The context's name.") var name: String
    @Option(name: .customLong("address"), help: ArgumentHelp("host:port (repeat for several replicas).", valueName: "host:port"))
    var addresses: [String] = []
    @Option(name: .customLong("ca-file")) var caFile: String?
    @Option(name: .customLong("token-file")) var tokenFile: String?
    @Option(name: .customLong("server-name")) var serverName: String?
    @Option(name: .customLong("client-cert")) var clientCert: String?
    @Option(name: .customLong("client-key")) var clientKey: String?
    @Flag(name: .customLong("use"), help: "Also make it the current context.") var use = false

    func run() throws {
        var (file, path) = try ConfigFile.load()
        var context = file.contexts[name] ?? ConfigFile.Context()
        let split = addresses.flatMap { $0.split(separator: ",").map(String.init) }
        for address in split where parseHostPortOrNil(address) == nil {
            throw CLIError.usage("invalid address '\(address)': expected host:port, e.g. 127.0.0.1:7443")
        }
        if !split.isEmpty { context.addresses = split }
        if let caFile { context.caFile = absolute(caFile) }
        if let tokenFile { context.tokenFile = absolute(tokenFile) }
        if let serverName { context.serverName = serverName }
        if let clientCert { context.clientCert = absolute(clientCert) }
        if let clientKey { context.clientKey = absolute(clientKey) }
        file.contexts[name] = context
        if use || file.currentContext == nil { file.currentContext = name }
        try file.save(to: path)
        print("context \(name) saved in \(path)\(file.currentContext == name ? " (current)" : "")")
    }
}

private func parseHostPortOrNil(_ text: String) -> FerryAddress? { try? FerryAddress(parsing: text) }

struct UseContext: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "use-context", abstract: "Make a context the current one.", discussion: """
        Examples:
          ferry config use-context prod
        """)
    @Argument(help: "The context's name.") var name: String

    func run() throws {
        var (file, path) = try ConfigFile.load()
        guard file.contexts[name] != nil else {
            throw CLIError.usage("no context '\(name)' in \(path); `ferry config get-contexts` lists them")
        }
        file.currentContext = name
        try file.save(to: path)
        print("current context: \(name)")
    }
}

struct GetContexts: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get-contexts", abstract: "List the contexts; * marks the current one.", discussion: """
        Examples:
          ferry config get-contexts
        """)

    func run() throws {
        let (file, path) = try ConfigFile.load()
        guard !file.contexts.isEmpty else { return print("no contexts in \(path)") }
        var table = TextTable(["CURRENT", "NAME", "ADDRESSES", "CA FILE", "TOKEN FILE"])
        for (name, context) in file.contexts.sorted(by: { $0.key < $1.key }) {
            table.add([file.currentContext == name ? "*" : "", name, context.addresses.joined(separator: ","), context.caFile ?? "-", context.tokenFile ?? "-"])
        }
        table.print()
    }
}

struct DeleteContext: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete-context", abstract: "Remove a context.", discussion: """
        Examples:
          ferry config delete-context staging
        """)
    @Argument(help: "The context's name.") var name: String

    func run() throws {
        var (file, path) = try ConfigFile.load()
        guard file.contexts.removeValue(forKey: name) != nil else {
            throw CLIError.usage("no context '\(name)' in \(path)")
        }
        if file.currentContext == name { file.currentContext = nil }
        try file.save(to: path)
        print("context \(name) deleted")
    }
}

struct ViewConfig: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "view", abstract: "Print the config file and where it is.", discussion: """
        Examples:
          ferry config view
          FERRY_CONFIG=./ci-ferry.json ferry config view
        """)

    func run() throws {
        let (file, path) = try ConfigFile.load()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        print("# \(path)")
        print(String(decoding: try encoder.encode(file), as: UTF8.self))
    }
}
