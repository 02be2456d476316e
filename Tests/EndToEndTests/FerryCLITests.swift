import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRuntime
import FerryTestSupport
import Foundation
import SwiftProtobuf
import Synchronization
import Testing

/// The `ferry` CLI driven as a user drives it: real processes against real replicas, with a
/// config file of its own, human and JSON output read back, exit codes checked.
@Suite(.serialized) struct FerryCLITests: TenantJobTest {
    /// Runs `ferry` with a private config file (and nothing from the developer's shell).
    struct CLI {
        let config: String
        var environment: [String: String] = [:]

        func callAsFunction(_ arguments: String..., environment extra: [String: String] = [:]) async throws -> ProcessResult {
            try await run(arguments, environment: extra)
        }

        func run(_ arguments: [String], environment extra: [String: String] = [:]) async throws -> ProcessResult {
            try await RunningProcess.run([FerryBinaries.ferry] + arguments,
                                         environment: environment.merging(["FERRY_CONFIG": config]) { $1 }.merging(extra) { $1 },
                                         timeout: .seconds(180))
        }

        func start(_ arguments: [String]) throws -> RunningProcess {
            try RunningProcess.start([FerryBinaries.ferry] + arguments, environment: environment.merging(["FERRY_CONFIG": config]) { $1 })
        }
    }

    /// Replicas running the real kinds, with a token file and a context saved by the CLI.
    private func withCLI(count: Int = 1, kinds: String = "realclone,realreplace,realexport,realimport", environment: [String: String] = [:],
                         jobMs: Int = 300, jobSteps: Int = 5, _ body: (Replicas, CLI) async throws -> Void) async throws {
        let store = FileManager.default.temporaryDirectory.path + "/ferry-cli-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: store + "/artifacts", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: store) }
        let environments = Array(repeating: ["FERRY_TEST_KINDS": kinds].merging(environment) { $1 }, count: count)
        try await Replicas.with(count: count, instances: 2, jobMs: jobMs, jobSteps: jobSteps,
                                arguments: ["--artifact-dir", store + "/artifacts"], environments: environments) { replicas in
            let tokenFile = store + "/admin.token"
            try replicas.token.write(toFile: tokenFile, atomically: true, encoding: .utf8)
            let cli = CLI(config: store + "/config.json")
            let saved = try await cli.run(["config", "set-context", "test", "--ca-file", replicas.caFile, "--token-file", tokenFile, "--use"]
                                          + replicas.servers.flatMap { ["--address", $0.address] })
            try #require(saved.status == 0, "\(saved.output)")
            try await body(replicas, cli)
        }
    }

    /// Lines of `output` that are JSON objects, decoded.
    private func jsonLines<M: SwiftProtobuf.Message>(_ output: String, as type: M.Type) throws -> [M] {
        try output.split(separator: "\n").filter { $0.hasPrefix("{") }.map { try M(jsonString: String($0)) }
    }

    // MARK: Every command

    /// Instances, tenants, every job kind with --watch, get and list in each format, artifacts,
    /// and the documented exit code of each failure class.
    @Test func everyCommandWithItsOutputAndExitCodes() async throws {
        try await withCLI(environment: ["FERRY_TEST_CLONE_BEFORE_VERIFY": "broken.orders@1:UPDATE {schema}.orders SET amount = amount + 1 WHERE id = (SELECT min(id) FROM {schema}.orders)"]) { replicas, cli in
            let source = replicas.instances["i0"]!, target = replicas.instances["i1"]!
            try await run(source, TenantFixture.sql(schema: "fixture"))

            // instances and tenants
            let instances = try await cli("instances", "list")
            #expect(instances.status == 0 && instances.lines.first?.hasPrefix("INSTANCE") == true && instances.lines.count == 3, "\(instances.output)")
            let instancesJSON = try jsonLines(try await cli("instances", "list", "-o", "json").output, as: ListInstancesResponse.self)
            #expect(instancesJSON.first?.instances.map(\.id) == ["i0", "i1"])
            #expect(try await cli("tenants", "i0").lines == ["fixture"])
            #expect(try await cli("tenants", "nowhere").status == 4)

            // clone, watched on a pipe: timestamped lines, then the verified result
            let clone = try await cli("start", "clone", "--from", "i0/fixture", "--to", "i1/copy", "--watch")
            #expect(clone.status == 0, "\(clone.output)")
            #expect(clone.lines.contains { $0.range(of: #"^\d{4}-\d\d-\d\dT[0-9:.]+Z [0-9a-f]{8} SUCCEEDED$"#, options: .regularExpression) != nil }, "\(clone.output)")
            let tables = TenantFixture.rowCounts.count
            #expect(clone.lines.last?.contains("SUCCEEDED") == true && clone.lines.last?.contains("\(tables) tables verified") == true, "\(clone.output)")
            #expect(try await TenantInspection.data(target, schema: "copy") == TenantInspection.data(source, schema: "fixture"))
            let cloneID = try #require(clone.lines.last?.split(separator: " ").dropFirst().first.map(String.init))

            // the same clone again: refused, exit 7, with the server's reason
            let again = try await cli("start", "clone", "--from", "i0/fixture", "--to", "i1/copy")
            #expect(again.status == 7 && again.output.contains("ALREADY_EXISTS"), "\(again.output)")

            // get, human and json
            let got = try await cli("get", cloneID)
            #expect(got.status == 0 && got.output.contains("SUCCEEDED") && got.output.contains("TENANT  TABLE"), "\(got.output)")
            let gotJSON = try #require(try jsonLines(try await cli("get", cloneID, "-o", "json").output, as: Job.self).first)
            #expect(gotJSON.status == .succeeded && gotJSON.result.tables.count == tables)

            // a clone that fails verification: exit 2 and the way out; the rerun resumes it: exit 0
            let broken = try await cli("start", "clone", "--from", "i0/fixture", "--to", "i1/broken", "--watch")
            #expect(broken.status == 2 && broken.output.contains("DATA_LOSS") && broken.output.contains("ferry rerun"), "\(broken.output)")
            let brokenID = try #require(broken.lines.last { $0.contains("FAILED") }?.split(separator: " ").dropFirst().first.map(String.init))
            let rerun = try await cli("rerun", brokenID, "--watch", "-o", "json")
            #expect(rerun.status == 0, "\(rerun.output)")
            let rerunEvents = try jsonLines(rerun.output, as: JobEvent.self)
            #expect(rerunEvents.first?.type == .snapshot && rerunEvents.first?.job.attempt == 2 && rerunEvents.first?.job.rerunOf == brokenID)
            #expect(rerunEvents.last?.type == .status && rerunEvents.last?.status == .succeeded)
            let rerunSeqs = rerunEvents.dropFirst().map(\.seq)
            #expect(rerunSeqs == rerunSeqs.sorted() && Set(rerunSeqs).count == rerunSeqs.count)
            #expect(try await TenantInspection.data(target, schema: "broken") == TenantInspection.data(source, schema: "fixture"))

            // export (-q prints the id), watch -o json, the artifact listed, imported, deleted
            let export = try await cli("start", "export", "--from", "i0/fixture", "--ttl", "2d", "-q")
            let exportID = export.output.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(export.status == 0 && UUID(uuidString: exportID) != nil, "\(export.output)")
            let watched = try await cli("watch", exportID, "-o", "json")
            #expect(watched.status == 0)
            #expect(try jsonLines(watched.output, as: JobEvent.self).filter { $0.type == .status }.map(\.status) == [.running, .succeeded], "\(watched.output)")
            let artifactID = try #require(try jsonLines(try await cli("get", exportID, "-o", "json").output, as: Job.self).first?.result.artifactID)
            let listed = try await cli("artifacts", "list")
            #expect(listed.output.contains(artifactID) && listed.output.contains("i0/fixture"), "\(listed.output)")
            let artifact = try #require(try jsonLines(try await cli("artifacts", "get", artifactID, "-o", "json").output, as: Artifact.self).first)
            #expect(artifact.tables == Int64(tables) && artifact.expiresAt.seconds - artifact.createdAt.seconds == 2 * 86400)
            let imported = try await cli("start", "import", "--artifact", artifactID, "--to", "i1/restored", "--watch")
            #expect(imported.status == 0 && imported.lines.last?.contains("tables verified") == true, "\(imported.output)")
            #expect(try await TenantInspection.data(target, schema: "restored") == TenantInspection.data(source, schema: "fixture"))
            #expect(try await cli("artifacts", "delete", artifactID).status == 0)
            #expect(try await cli("artifacts", "get", artifactID).status == 4)

            // replace of one listed tenant
            let replace = try await cli("start", "replace", "--from", "i0", "--to", "i1", "--tenant", "fixture", "--watch")
            #expect(replace.status == 0 && replace.lines.last?.contains("1 of 1 tenants copied and verified") == true, "\(replace.output)")

            // list: the table, the filters, paging, JSON
            let list = try await cli("list")
            #expect(list.lines.first?.hasPrefix("JOB") == true && list.lines.count == 1 + 6, "\(list.output)")
            let clones = try #require(try jsonLines(try await cli("list", "--kind", "clone", "-o", "json").output, as: ListJobsResponse.self).first)
            #expect(clones.jobs.count == 3 && clones.jobs.allSatisfy { $0.kind == .clone })
            #expect(try await cli("list", "--status", "failed").lines.count == 2)
            let page = try await cli("list", "--limit", "2")
            #expect(page.lines.count == 3 + 1 && page.output.contains("more: ferry list --page-token"), "\(page.output)")
            let all = try #require(try jsonLines(try await cli("list", "--limit", "2", "--all", "-o", "json").output, as: ListJobsResponse.self).first)
            #expect(all.jobs.count == 6 && all.nextPageToken.isEmpty)

            // each failure class has its exit code and one line saying what to do
            let unknown = try await cli("get", UUID().uuidString.lowercased())
            #expect(unknown.status == 4 && unknown.output.hasPrefix("ferry: error: NOT_FOUND"), "\(unknown.output)")
            #expect(try await cli("get", "not-a-uuid").status == 7)
            #expect(try await cli("list", "--status", "sleeping").status == 64)
            #expect(try await cli("start", "clone", "--from", "fixture", "--to", "i1/x").status == 64)
            #expect(try await cli("list", "--context", "nonesuch").status == 64)
            #expect(try await cli("list", "--timeout", "inf").status == 64)
            let notPEM = try await cli("list", "--ca-file", "/etc/hostname")
            #expect(notPEM.status == 64 && notPEM.output.contains("holds no PEM certificate"), "\(notPEM.output)")
            let noToken = try await cli.run(["config", "set-context", "anonymous", "--address", replicas.servers[0].address, "--ca-file", replicas.caFile])
            #expect(noToken.status == 0 && noToken.output.contains("context anonymous saved") && !noToken.output.contains("(current)"), "\(noToken.output)")
            let anonymous = try await cli("list", "--context", "anonymous")
            #expect(anonymous.status == 5 && anonymous.output.contains("UNAUTHENTICATED") && anonymous.output.contains("hint: give a token"), "\(anonymous.output)")
            let nobody = try await cli("list", "--address", "127.0.0.1:\(try SystemProcess.freeLoopbackPort())")
            #expect(nobody.status == 6 && nobody.output.contains("cannot reach ferryd") && nobody.output.contains("hint: is ferryd running"), "\(nobody.output)")
        }
    }

    // MARK: Cancel, the live display, a restart under a watch

    /// A running job cancelled from the CLI; its watch exits 3, the rerun exits 0; the live
    /// display under a pseudo-terminal redraws in place and ends with the result line.
    @Test func cancelRerunAndTheLiveDisplayUnderAPseudoTerminal() async throws {
        try await withCLI(kinds: "clone", jobMs: 4000, jobSteps: 8) { replicas, cli in
            let started = try await cli("start", "clone", "--from", "i0/src", "--to", "i0/dst", "-q")
            let id = started.output.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(started.status == 0 && UUID(uuidString: id) != nil, "\(started.output)")
            let cancelled = try await cli("cancel", id, "--watch")
            #expect(cancelled.status == 3 && cancelled.output.contains("CANCELLED"), "\(cancelled.output)")
            let rerunID = try await cli("rerun", id, "-q").output.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(UUID(uuidString: rerunID) != nil)

            // `script` gives ferry a terminal; its transcript is what the user saw.
            let transcript = FileManager.default.temporaryDirectory.path + "/ferry-pty-\(UUID().uuidString.prefix(8))"
            defer { try? FileManager.default.removeItem(atPath: transcript) }
            let command = ([FerryBinaries.ferry, "watch", rerunID]).map { "'\($0)'" }.joined(separator: " ")
            let pty = try await RunningProcess.run(["/usr/bin/script", "-q", "-e", "-c", command, transcript],
                                                   environment: ["FERRY_CONFIG": cli.config, "COLUMNS": "120", "TERM": "xterm"], timeout: .seconds(120))
            #expect(pty.status == 0, "\(pty.output)")
            let screen = try String(contentsOfFile: transcript, encoding: .utf8)
            let redraws = screen.components(separatedBy: "\u{1B}[J").count - 1
            #expect(redraws >= 3, "the display is redrawn in place (cursor up, clear): \(redraws) redraws in \(screen.debugDescription)")
            #expect(screen.range(of: "\u{1B}\\[[23]A", options: .regularExpression) != nil)
            #expect(screen.contains("█") && screen.contains("░"), "a progress bar")
            #expect(screen.contains("in flight:"))
            let final = screen.components(separatedBy: "\r\n").last { $0.contains("SUCCEEDED in") }
            #expect(final?.hasPrefix("clone \(rerunID) SUCCEEDED in") == true, "\(screen.debugDescription)")
            // The same watch on a pipe has no control characters at all.
            let piped = try await cli("watch", rerunID)
            #expect(piped.status == 0 && !piped.output.contains("\u{1B}"), "\(piped.output)")
            // A finished job's watch prints its outcome, not a replay of its history.
            #expect(piped.lines.count == 1 && piped.lines[0].hasPrefix("clone \(rerunID) SUCCEEDED"), "\(piped.output)")
        }
    }

    /// `ferry watch -o json` through one replica that restarts while the job is cancelled
    /// elsewhere: the watch reconnects, prints every STATUS event once (the CANCELLED one
    /// included) and exits 3.
    @Test func aWatchSurvivesAReplicaRestartWithoutLosingAStatusEvent() async throws {
        try await withCLI(count: 2, kinds: "clone", jobMs: 12000, jobSteps: 24) { replicas, cli in
            let started = try await cli("start", "clone", "--from", "i0/src", "--to", "i0/dst", "-o", "json")
            let job = try #require(try jsonLines(started.output, as: Job.self).first, "\(started.output)")
            let result = ResultBox()
            let outcome = try await watchAcrossARestart(job, replicas) { address in
                let watch = try cli.start(["watch", job.id, "--address", "\(address)", "-o", "json"])
                return WatchHandle(seen: { watch.output.split(separator: "\n").filter { $0.hasPrefix("{") }.count },
                                   end: {
                                       let finished = await watch.finish()
                                       result.value.withLock { $0 = finished }
                                       return finished.status
                                   })
            }
            _ = await outcome.restarted.stop()
            let output = try #require(result.value.withLock { $0 }).output
            #expect(outcome.watcherStatus == 3, "exit 3 for a job that ended CANCELLED: \(output)")
            #expect(output.contains("ferry: connection lost; reconnected to \(outcome.restartedAddress)"), "\(output)")
            let events = try jsonLines(output, as: JobEvent.self)
            let statuses = events.filter { $0.type == .status }.map { "\($0.seq):\($0.status.name)" }
            #expect(statuses == outcome.statusEvents, "\(output)")
            let history = events.filter { $0.type != .snapshot }.map(\.seq)
            #expect(history == history.sorted() && Set(history).count == history.count, "\(history)")
        }
    }
}


/// A finished watch's result, kept by the closure that waited for it.
private final class ResultBox: Sendable {
    let value = Mutex<ProcessResult?>(nil)
}
