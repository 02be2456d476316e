import ControlDatabase
import EmbeddedPostgres
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import Testing

/// `ferryd serve` as a real process speaking ferry/1: TLS from configured files or a
/// generated self-signed certificate, tokens from a file, the environment or a generated
/// admin token, the `ferry` CLI against it, and goaway on SIGTERM.
@Suite struct RPCServeTests {
    private func client(_ server: ServingFerryd, caFile: String?, token: String?) async throws -> FerryConnection {
        try await FerryConnection.connect(FerryClientConfiguration(host: server.host, port: server.port, trustRootsFile: caFile, token: token))
    }

    /// The status code a call ends with (OK when it succeeds).
    private func code(_ client: FerryConnection, _ method: MethodInfo, _ message: JSONValue = .object([:])) async -> StatusCode {
        do {
            for try await _ in client.call(method.name, json: message, timeout: .seconds(30)) {}
            return .ok
        } catch let error as RPCError {
            return error.code
        } catch {
            return .unknown
        }
    }

    private func ferry(_ arguments: [String], environment: [String: String] = [:]) async throws -> ProcessResult {
        try await RunningProcess.run([FerryBinaries.ferry] + arguments, environment: environment, timeout: .seconds(60))
    }

    private func mode(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions]) as? NSNumber)?.intValue ?? -1
    }

    @Test func theEmbeddedDefaultServesTLSWithAGeneratedCertificateAndAdminToken() async throws {
        try await ServingFerryd.with() { server in
            let caFile = try #require(server.ready["caFile"])
            let tokenFile = try #require(server.ready["tokenFile"])
            let directory = try #require(server.ready["embeddedDirectory"])
            // Generated credentials live in the cluster directory and are private.
            #expect(caFile.hasPrefix(directory) && tokenFile.hasPrefix(directory))
            #expect(mode(tokenFile) == 0o600)
            #expect(mode((caFile as NSString).deletingLastPathComponent + "/key.pem") == 0o600)
            let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)

            // The CLI: trusted by the generated certificate, and refused without it.
            let health = try await ferry(["health", "--address", server.address, "--ca-file", caFile])
            #expect(health.status == 0 && health.output == "SERVING\n", "\(health.output)")
            let untrusted = try await ferry(["health", "--address", server.address])
            #expect(untrusted.status == 6, "UNAVAILABLE exits 6")
            #expect(untrusted.output.contains("ferry: error: UNAVAILABLE") && untrusted.output.contains("not trusted"), "\(untrusted.output)")

            // Health needs no token; other methods need the generated one.
            let anonymous = try await client(server, caFile: caFile, token: nil)
            defer { anonymous.close() }
            #expect(try await anonymous.check().status == .serving)
            #expect(await code(anonymous, FerryMethods.listJobs.info) == .unauthenticated)
            let admin = try await client(server, caFile: caFile, token: token)
            // The role is enough; then the empty request itself is refused.
            #expect(await code(admin, FerryMethods.putInstance.info) == .invalidArgument)
            let wrong = try await client(server, caFile: caFile, token: "fy_not-the-token")
            defer { wrong.close() }
            #expect(await code(wrong, FerryMethods.getJob.info) == .unauthenticated)

            // SIGTERM: the open connection is told goaway, the process exits 0, and the
            // generated key and token went with the cluster directory.
            server.process.child.signal(SIGTERM)
            for _ in 0..<100 where !admin.isGoingAway { try await Task.sleep(for: .milliseconds(100)) }
            #expect(admin.isGoingAway)
            admin.close()
            let result = await server.stop()
            #expect(result.status == 0, "\(result.output)")
            #expect(!FileManager.default.fileExists(atPath: tokenFile))
            #expect(!FileManager.default.fileExists(atPath: directory))
        }
    }

    @Test func configuredCertificateAndTokensFileAndEnvironmentWithRoles() async throws {
        let url = try await TestPostgres.shared.freshDatabase("rpc_serve")
        let files = FileManager.default.temporaryDirectory.path + "/ferry-creds-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: files) }
        let (certificate, key) = try SelfSignedCertificate.generate().write(to: files)
        let tokensFile = files + "/tokens"

        // `ferryd token create` prints the token once and appends only its hash.
        var tokens: [String: String] = [:]
        for (principal, role) in [("vera", "viewer"), ("otto", "operator")] {
            let created = try await RunningProcess.run([FerryBinaries.ferryd, "token", "create", "--tokens-file", tokensFile, "--principal", principal, "--role", role])
            #expect(created.status == 0, "\(created.output)")
            tokens[role] = created.output.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let stored = try String(contentsOfFile: tokensFile, encoding: .utf8)
        #expect(mode(tokensFile) == 0o600)
        #expect(stored.split(separator: "\n").count == 2)
        for token in tokens.values {
            #expect(!token.isEmpty && !stored.contains(token))
            #expect(stored.contains(TokenStore.hash(token)))
        }
        let badRole = try await RunningProcess.run([FerryBinaries.ferryd, "token", "create", "--tokens-file", tokensFile, "--principal", "x", "--role", "root"])
        #expect(badRole.status == 1 && badRole.output.contains("expected viewer, operator or admin"), "\(badRole.output)")
        #expect(try String(contentsOfFile: tokensFile, encoding: .utf8) == stored, "a refused create must not touch the file")

        // An admin token through FERRY_TOKENS, with Windows line ends.
        let adminToken = TokenStore.generateToken()
        let environment = [
            "FERRY_DATABASE_URL": url.secretURLString,
            "FERRY_TOKENS": "# from the environment\r\n" + TokenStore.line(token: adminToken, principal: Principal(name: "ada", role: .admin)) + "\r\n",
        ]
        try await ServingFerryd.with(["--tls-cert", certificate, "--tls-key", key, "--tokens-file", tokensFile], environment: environment) { server in
            #expect(server.ready["caFile"] == certificate)
            #expect(server.ready["tokenFile"] == nil, "no token is generated when tokens are configured")

            let viewer = try await client(server, caFile: certificate, token: tokens["viewer"])
            let operatorClient = try await client(server, caFile: certificate, token: tokens["operator"])
            let admin = try await client(server, caFile: certificate, token: adminToken)
            defer { for client in [viewer, operatorClient, admin] { client.close() } }
            // Roles are checked before the request: an empty one is refused only once the role
            // is enough.
            #expect(await code(viewer, FerryMethods.getJob.info) == .invalidArgument)
            #expect(await code(viewer, FerryMethods.startJob.info) == .permissionDenied)
            #expect(await code(operatorClient, FerryMethods.startJob.info) == .invalidArgument)
            #expect(await code(operatorClient, FerryMethods.putInstance.info) == .permissionDenied)
            #expect(await code(admin, FerryMethods.putInstance.info) == .invalidArgument)
            // ferryd runs every kind, and this one has no artifact store: a well-formed export
            // StartJob is refused FAILED_PRECONDITION, and nothing is admitted; a clone of an
            // unregistered instance is planned, and refused NOT_FOUND.
            let export: JSONValue = .object(["export": .object(["sourceInstance": .string("a"), "sourceTenant": .string("s")])])
            #expect(await code(operatorClient, FerryMethods.startJob.info, export) == .failedPrecondition)
            let clone: JSONValue = .object(["clone": .object([
                "sourceInstance": .string("a"), "sourceTenant": .string("s"), "targetInstance": .string("b"), "targetTenant": .string("t"),
            ])])
            #expect(await code(operatorClient, FerryMethods.startJob.info, clone) == .notFound)
            #expect(await code(admin, FerryMethods.healthCheck.info) == .ok)

            let result = await server.stop()
            #expect(result.status == 0, "\(result.output)")
            #expect(FileManager.default.fileExists(atPath: certificate), "configured files are never removed")
            // Both listeners bind at once; exactly one of them announces and writes the ready
            // file (two writers once raced on its temporary file and ended the server).
            #expect(result.output.components(separatedBy: "ferryd is serving").count == 2, "\(result.output)")
        }
    }

    @Test func clientCertificatesAreRequiredWhenAClientCAIsSet() async throws {
        let files = FileManager.default.temporaryDirectory.path + "/ferry-mtls-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: files) }
        let clientFiles = try SelfSignedCertificate.generate(commonName: "ferry-client").write(to: files + "/client")
        try await ServingFerryd.with(["--tls-client-ca", clientFiles.certificate]) { server in
            let caFile = try #require(server.ready["caFile"])

            let withCertificate = try await ferry(["health", "--address", server.address, "--ca-file", caFile,
                                                   "--client-cert", clientFiles.certificate, "--client-key", clientFiles.key])
            #expect(withCertificate.status == 0 && withCertificate.output == "SERVING\n", "\(withCertificate.output)")
            let without = try await ferry(["health", "--address", server.address, "--ca-file", caFile])
            #expect(without.status == 6 && without.output.contains("ferry: error: UNAVAILABLE"), "\(without.output)")
            // A certificate the server does not trust is refused too.
            let strangerFiles = try SelfSignedCertificate.generate(commonName: "stranger").write(to: files + "/stranger")
            let stranger = try await ferry(["health", "--address", server.address, "--ca-file", caFile,
                                            "--client-cert", strangerFiles.certificate, "--client-key", strangerFiles.key])
            #expect(stranger.status == 6, "\(stranger.output)")
            #expect(await server.stop().status == 0)
        }
    }

    /// Bad TLS or token configuration stops start-up with one line, before anything is created.
    @Test(arguments: [
        (["--tls-cert", "/nonexistent/cert.pem"], "set both --tls-cert and --tls-key"),
        (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "cannot read the TLS certificate file /nonexistent/cert.pem"),
        (["--tokens-file", "/nonexistent/tokens"], "cannot read the tokens file /nonexistent/tokens"),
        (["--listen", "nowhere"], "invalid --listen: 'nowhere' is not host:port"),
        (["--max-streams", "0"], "invalid --max-streams"),
    ])
    func badConfigurationIsOneLine(arguments: [String], expected: String) async throws {
        let url = try await TestPostgres.shared.freshDatabase("rpc_refusal")
        let result = try await RunningProcess.run(
            [FerryBinaries.ferryd, "serve", "--ops-address", "127.0.0.1:0", "--listen", "127.0.0.1:0"] + arguments,
            environment: ["FERRY_DATABASE_URL": url.secretURLString])
        #expect(result.status == 1, "\(result.output)")
        #expect(result.lines.count == 1 && result.output.hasPrefix("ferryd: error: "), "\(result.output)")
        #expect(result.output.contains(expected), "\(result.output)")
        // Refused before migrating: the control database is untouched.
        #expect(try await scalar(url, "SELECT (to_regclass('ferry_schema_migrations') IS NULL)::int") == 1)
    }

    @Test func aKeyThatDoesNotMatchItsCertificateIsRefused() async throws {
        let files = FileManager.default.temporaryDirectory.path + "/ferry-mismatch-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: files) }
        let first = try SelfSignedCertificate.generate().write(to: files + "/a")
        let second = try SelfSignedCertificate.generate().write(to: files + "/b")
        let url = try await TestPostgres.shared.freshDatabase("rpc_mismatch")
        let result = try await RunningProcess.run(
            [FerryBinaries.ferryd, "serve", "--ops-address", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--tls-cert", first.certificate, "--tls-key", second.key],
            environment: ["FERRY_DATABASE_URL": url.secretURLString])
        #expect(result.status == 1 && result.lines.count == 1, "\(result.output)")
        #expect(result.output.contains("cannot be used together (does the key belong to the certificate?)"), "\(result.output)")
    }
}
