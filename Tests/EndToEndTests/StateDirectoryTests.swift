import EmbeddedPostgres
import FerryRuntime
import FerryTestSupport
import Foundation
import Testing

/// A `--state-dir` that already exists is adopted only when it is private to ferryd's user and
/// its admin token looks like one ferryd generates; otherwise `ferryd serve` refuses with one
/// line naming the path and the fix, before it touches the database.
@Suite struct StateDirectoryTests {
    /// A state directory ferryd would accept: mode 0700, a well-formed admin token, mode 0600.
    private func privateStateDirectory() throws -> (directory: String, token: String) {
        let directory = FileManager.default.temporaryDirectory.path + "/ferry-state-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        #expect(chmod(directory, 0o700) == 0)
        // The shape of a generated token: fy_ and 32 bytes of unpadded base64url.
        let token = "fy_" + String(repeating: "Ab9-_", count: 8) + "xyz"
        try write(directory + "/admin.token", token + "\n", mode: 0o600)
        return (directory, token)
    }

    private func write(_ path: String, _ text: String, mode: mode_t) throws {
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        #expect(chmod(path, mode) == 0)
    }

    /// `ferryd serve` with this state directory, against a database that is never reached
    /// (a refusal must come first; reaching for the database is an error of its own).
    private func serve(stateDirectory: String) async throws -> ProcessResult {
        let port = try SystemProcess.freeLoopbackPort()
        return try await RunningProcess.run(
            [FerryBinaries.ferryd, "serve", "--state-dir", stateDirectory, "--listen", "127.0.0.1:0", "--ops-address", "127.0.0.1:0"],
            environment: ["FERRY_DATABASE_URL": "postgres://ferry:x@127.0.0.1:\(port)/ferry"], timeout: .seconds(60))
    }

    private func expectRefusal(_ result: ProcessResult, naming path: String, _ expected: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 1, "status \(result.status): \(result.output)", sourceLocation: sourceLocation)
        #expect(result.lines.count == 1, "expected one line, got: \(result.output)", sourceLocation: sourceLocation)
        #expect(result.lines.first?.hasPrefix("ferryd: error: the ") == true, "\(result.output)", sourceLocation: sourceLocation)
        #expect(result.output.contains(path), "\(result.output) does not name \(path)", sourceLocation: sourceLocation)
        #expect(result.output.contains(expected), "\(result.output) does not say \(expected)", sourceLocation: sourceLocation)
    }

    @Test func aStateDirectoryOthersCanEnterIsRefused() async throws {
        let (directory, _) = try privateStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(chmod(directory, 0o755) == 0)
        expectRefusal(try await serve(stateDirectory: directory), naming: directory, "accessible by group or others (mode 755): chmod 700 \(directory)")
    }

    @Test func aReadableAdminTokenOrKeyIsRefused() async throws {
        let (directory, _) = try privateStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let token = directory + "/admin.token"
        #expect(chmod(token, 0o644) == 0)
        expectRefusal(try await serve(stateDirectory: directory), naming: token, "accessible by group or others (mode 644): chmod 600 \(token)")

        #expect(chmod(token, 0o600) == 0)
        let key = directory + "/key.pem"
        try write(key, "not looked at before its mode\n", mode: 0o640)
        expectRefusal(try await serve(stateDirectory: directory), naming: key, "accessible by group or others (mode 640): chmod 600 \(key)")
    }

    @Test func anAdminTokenOfTheWrongShapeIsRefusedWithoutShowingIt() async throws {
        let (directory, _) = try privateStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let token = directory + "/admin.token"
        for planted in ["hunter2", "fy_short", "fy_" + String(repeating: "a", count: 42) + "!"] {
            try write(token, planted + "\n", mode: 0o600)
            let result = try await serve(stateDirectory: directory)
            expectRefusal(result, naming: token, "does not hold a token of the form ferryd generates")
            #expect(!result.output.contains(planted))
        }
    }

    @Test func aStateDirectoryOfAnotherUserIsRefused() async throws {
        // Only root can give a file away.
        guard geteuid() == 0 else { return }
        let (directory, _) = try privateStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let token = directory + "/admin.token"
        #expect(chown(token, 65534, 65534) == 0)
        expectRefusal(try await serve(stateDirectory: directory), naming: token, "belongs to uid 65534, not to this user (uid 0): chown it")
        #expect(chown(token, 0, 0) == 0)
        #expect(chown(directory, 65534, 65534) == 0)
        expectRefusal(try await serve(stateDirectory: directory), naming: directory, "belongs to uid 65534, not to this user (uid 0)")
    }

    /// The control: a private directory with a well-formed token is adopted, token and all.
    @Test func aPrivateStateDirectoryIsAdopted() async throws {
        let (directory, token) = try privateStateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let url = try await TestPostgres.shared.freshDatabase("state_dir")
        try await ServingFerryd.with(["--state-dir", directory], environment: ["FERRY_DATABASE_URL": url.secretURLString]) { server in
            #expect(server.ready["tokenFile"] == directory + "/admin.token")
            let kept = (try? String(contentsOfFile: directory + "/admin.token", encoding: .utf8)) ?? ""
            #expect(kept == token + "\n")
            #expect(server.ready["caFile"] == directory + "/cert.pem")
        }
    }
}
