import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryRuntime
import FerryTestSupport
import Foundation
import PostgresNIO
import Testing

/// ferryd's logs as an operator ships them: `--log-format json` gives one JSON object per
/// line, job lines carry the job, attempt and replica, and no secret (instance or
/// control-database password, bearer token) appears in any line or error answer, whatever
/// fails.
@Suite(.serialized) struct LogTests: TenantJobTest {
    /// Random, so that no other text can contain it by chance.
    static func secret(_ prefix: String) -> String {
        prefix + (0..<12).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }

    @Test func jsonLogsParseCarryTheJobAndHoldNoSecret() async throws {
        // A role whose password the cluster (scram on TCP) requires, owning a fresh database:
        // the instance `pw`. Its password has the characters a DSN must escape.
        let superuser = try await TestPostgres.shared.freshDatabase("logs")
        let role = "logrole_\(UInt32.random(in: 0...UInt32.max))"
        let password = Self.secret("pw@:/%\"\\ ")
        try await run(superuser, """
            CREATE ROLE \(role) LOGIN PASSWORD '\(password)';
            ALTER DATABASE "\(superuser.database)" OWNER TO \(role);
            """)
        var instance = superuser
        instance.user = role
        instance.password = password
        try await run(instance, """
            CREATE SCHEMA app;
            CREATE TABLE app.a (id int PRIMARY KEY, v text);
            CREATE TABLE app.slow (id int PRIMARY KEY, v text);
            INSERT INTO app.a SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
            INSERT INTO app.slow SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
            """)
        // The password is really required: without it, or with another, the login fails.
        for wrong in [nil, "not-\(password)"] {
            var url = instance
            url.password = wrong
            await #expect(throws: DatabaseError.self, "the role logs in with password \(wrong ?? "none")") {
                try await url.withConnection(logger: logger) { _ in }
            }
        }

        let wrongPassword = Self.secret("wrong-")
        let deadPassword = Self.secret("dead-")
        let badToken = TokenStore.generateToken()
        let viewerToken = TokenStore.generateToken()
        let files = FileManager.default.temporaryDirectory.path + "/ferry-logs-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: files, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: files) }
        try (TokenStore.line(token: viewerToken, principal: Principal(name: "watcher", role: .viewer)) + "\n").write(toFile: files + "/tokens", atomically: true, encoding: .utf8)
        // The job `held` waits in its table `slow` (attempt 1) until its replica is killed.
        let environment = [
            "FERRY_TEST_KINDS": "realclone", "FERRY_LOG_LEVEL": "debug", "FERRY_TOKENS_FILE": files + "/tokens",
            "FERRY_TEST_CLONE_BEFORE_VERIFY": "held.slow@1:SELECT pg_sleep(60)",
        ]
        var answers: [String] = []
        let replicas = try await Replicas.start(count: 2, instances: 1, arguments: ["--log-format", "json"], environments: [environment, environment])
        do {
            let client = try await replicas.client(0)
            defer { client.close() }
            // Whatever a refused DSN says, it says it without the passwords.
            func putInstance(_ id: String, _ dsn: String, on client: FerryConnection = client) async -> RPCError? {
                do {
                    _ = try await client.unary(FerryMethods.putInstance, .with { $0.id = id; $0.dsn = dsn })
                    return nil
                } catch let error as RPCError {
                    answers.append(error.message)
                    return error
                } catch {
                    answers.append("\(error)")
                    Issue.record("PutInstance \(id): \(error)")
                    return nil
                }
            }
            var wrong = instance
            wrong.password = wrongPassword
            #expect(await putInstance("wrong", wrong.secretURLString)?.code == .failedPrecondition)
            var dead = instance
            dead.port = try SystemProcess.freeLoopbackPort()
            dead.password = deadPassword
            #expect(await putInstance("dead", dead.secretURLString)?.code == .failedPrecondition)
            // Unescaped, the password's '@', ':' and '/' make a URL that does not parse.
            #expect(await putInstance("raw", "postgres://\(role):\(password)@\(instance.endpoint)/\(instance.database)")?.code == .invalidArgument)
            #expect(await putInstance("pw", instance.secretURLString) == nil)
            let quoted = password.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'")
            #expect(await putInstance("pwkv", "host=\(instance.host) port=\(instance.port) user=\(role) password='\(quoted)' dbname=\(instance.database)") == nil)

            // A token the server does not know, and a viewer's token for an operator's call.
            for token in [badToken, viewerToken] {
                let server = replicas.servers[1]
                let other = try await FerryConnection.connect(FerryClientConfiguration(host: server.host, port: server.port, trustRootsFile: replicas.caFile, token: token))
                defer { other.close() }
                let code = await putInstance("other", instance.secretURLString, on: other)?.code
                #expect(code == (token == badToken ? .unauthenticated : .permissionDenied))
            }

            // A real clone that succeeds, with both of its sessions on the password DSN.
            var request = StartJobRequest()
            request.clone = .clone(from: "pw", "app", to: "pw", "copied")
            let copied = try await client.startJob(request)
            let done = try await client.waitFor(copied.id, timeout: .seconds(120)) { $0.status.isTerminal }
            #expect(done.status == .succeeded, "\(done.error)")

            // One held in its table `slow`; its replica is killed and the other's leader
            // rescues it. Then the role's password changes: the rerun can no longer connect.
            request.clone = .clone(from: "pw", "app", to: "pwkv", "held")
            let held = try await client.startJob(request)
            try await waitUntil("the held job copied its tables") {
                try await replicas.query {
                    try await $0.execute("""
                        SELECT count(*)::int FROM job_tables WHERE root_job_id = \(UUID(uuidString: held.id)!) AND table_name = 'a' AND status = 'VERIFIED'
                        """, logger: logger).first!.decode(Int.self) == 1
                }
            }
            let killed = try await runningReplica(of: held, replicas)
            replicas.servers[killed].process.child.signal(SIGKILL)
            let survivor = try await replicas.client(1 - killed)
            defer { survivor.close() }
            let failed = try await survivor.waitFor(held.id, timeout: .seconds(60)) { $0.status.isTerminal }
            #expect(failed.status == .failed && failed.error.retryable, "\(failed)")
            answers.append(failed.error.message)
            try await run(superuser, "ALTER ROLE \(role) PASSWORD '\(Self.secret("changed-"))'")
            do {
                let rerun = try await survivor.rerun(held.id)
                let ended = try await survivor.waitFor(rerun.id, timeout: .seconds(120)) { $0.status.isTerminal }
                #expect(ended.status == .failed, "\(ended)")
                answers.append(ended.error.message)
            } catch let error as RPCError {
                answers.append(error.message)
            }
            do {
                _ = try await survivor.unary(FerryMethods.listTenants, .with { $0.instanceID = "pw" })
                Issue.record("ListTenants connected with a changed password")
            } catch let error as RPCError {
                #expect(error.code == .failedPrecondition, "\(error)")
                answers.append(error.message)
            }
        } catch {
            _ = await replicas.stop()
            throw error
        }
        let outputs = await replicas.stop()

        // Every line of every replica (the killed one too) is one JSON object.
        var jobLines = 0
        for (index, output) in outputs.enumerated() {
            for line in output.lines {
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                    Issue.record("replica \(index): a line is not a JSON object: \(line)")
                    continue
                }
                for field in ["ts", "level", "logger", "message"] where object[field] == nil {
                    Issue.record("replica \(index): no \(field): \(line)")
                }
                guard object["job_id"] != nil else { continue }
                jobLines += 1
                #expect(object["replica"] != nil, "replica \(index): a job line without its replica: \(line)")
                #expect(object["attempt"] != nil, "replica \(index): a job line without its attempt: \(line)")
            }
        }
        let all = outputs.map(\.output).joined(separator: "\n")
        #expect(jobLines >= 4, "too few job lines: \(all.suffix(4000))")
        #expect(all.contains("rescued a job whose replica stopped heartbeating"), "no rescue logged: \(all.suffix(4000))")

        // No secret anywhere: passwords (in full and their random part), tokens.
        let cluster = try await TestPostgres.shared.server()
        let secrets = [password, String(password.suffix(24)), wrongPassword, deadPassword, cluster.password, replicas.token, viewerToken, badToken]
        let leaked = leakedSecrets(in: all, secrets: secrets)
        #expect(leaked.isEmpty, "secrets in the logs:\n\(leaked.joined(separator: "\n"))")
        let answered = leakedSecrets(in: answers.joined(separator: "\n"), secrets: secrets)
        #expect(answered.isEmpty, "secrets in error answers:\n\(answered.joined(separator: "\n"))")
        #expect(answers.count >= 8, "\(answers)")
    }

    /// --log-format is in the help; an unknown format, from the flag or the environment, is
    /// refused with a message naming it.
    @Test func anUnknownLogFormatIsRefusedByName() async throws {
        let help = try await RunningProcess.run([FerryBinaries.ferryd, "serve", "--help"])
        #expect(help.output.contains("--log-format <format>") && help.output.contains("FERRY_LOG_FORMAT"), "\(help.output)")
        let flag = try await RunningProcess.run([FerryBinaries.ferryd, "serve", "--log-format", "xml"])
        #expect(flag.status != 0 && flag.output.contains("'xml'") && flag.output.contains("--log-format"), "\(flag.output)")
        let variable = try await RunningProcess.run([FerryBinaries.ferryd, "migrate"], environment: ["FERRY_LOG_FORMAT": "xml"])
        #expect(variable.status == 1 && variable.output.contains("invalid FERRY_LOG_FORMAT 'xml': expected text or json"), "\(variable.output)")
    }
}
