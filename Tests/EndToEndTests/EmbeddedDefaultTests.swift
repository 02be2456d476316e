import EmbeddedPostgres
import FerryRuntime
import FerryTestSupport
import Foundation
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `ferryd serve` without a database URL: it creates a throwaway cluster, migrates it,
/// answers on the ops endpoint, and on SIGTERM (or even SIGKILL) leaves nothing behind.
@Suite struct EmbeddedDefaultTests {
    struct Started {
        var process: RunningProcess
        var opsURL: String
        var directory: String
        var postmasterPID: pid_t
        var parent: String
    }

    private func startServer() async throws -> Started {
        let server = try await ServingFerryd.start()
        guard let opsURL = server.ready["opsURL"], let directory = server.ready["embeddedDirectory"] else {
            server.process.child.signal(SIGKILL)
            _ = await server.process.finish()
            throw SystemProcess.Failure(message: "the ready file lacks opsURL or embeddedDirectory: \(server.ready)")
        }
        #expect(directory.hasPrefix(server.scratch))
        #expect(server.ready["database"]?.contains(":***@") == true, "the ready file must not hold the password")
        let pidText = try String(contentsOfFile: directory + "/data/postmaster.pid", encoding: .utf8).split(separator: "\n").first ?? ""
        return Started(process: server.process, opsURL: opsURL, directory: directory, postmasterPID: pid_t(pidText) ?? -1, parent: server.scratch)
    }

    private func get(_ url: String) async throws -> (Int, String) {
        let (data, response) = try await URLSession.shared.data(from: URL(string: url)!)
        return ((response as? HTTPURLResponse)?.statusCode ?? -1, String(decoding: data, as: UTF8.self))
    }

    /// Processes whose command line mentions `text` (the cluster directory).
    private func processesMentioning(_ text: String) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.filter { Int($0) != nil }.compactMap { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
            let commandLine = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            return commandLine.contains(text) ? "\(pid): \(commandLine)" : nil
        }
    }

    /// Whether `pid` runs. An exited process whose parent has not reaped it yet (a zombie;
    /// the postmaster's parent is init once pg_ctl exits) has stopped and counts as gone.
    private func isRunning(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }

    private func expectNothingLeft(_ started: Started, within seconds: Int) async throws {
        var left: [String] = []
        for _ in 0..<(seconds * 10) {
            left = processesMentioning(started.directory)
            if left.isEmpty, !FileManager.default.fileExists(atPath: started.directory), !isRunning(started.postmasterPID) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(left.isEmpty, "processes left behind: \(left)")
        #expect(!FileManager.default.fileExists(atPath: started.directory), "cluster directory left behind")
        #expect(!isRunning(started.postmasterPID), "postmaster \(started.postmasterPID) still running")
        try? FileManager.default.removeItem(atPath: started.parent)
    }

    @Test func servesHealthyAndLeavesNothingAfterSIGTERM() async throws {
        let started = try await startServer()
        #expect(started.postmasterPID > 0 && isRunning(started.postmasterPID))

        let (status, body) = try await get(started.opsURL + "/healthz")
        #expect(status == 200)
        #expect(body == "SERVING\n")
        let (metricsStatus, metrics) = try await get(started.opsURL + "/metrics")
        #expect(metricsStatus == 200)
        #expect(metrics.contains("ferry_build_info"))
        let (missingStatus, _) = try await get(started.opsURL + "/nope")
        #expect(missingStatus == 404)

        started.process.child.signal(SIGTERM)
        let result = await started.process.finish(timeout: .seconds(60))
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("ferryd stopped"))
        // Graceful stop removes everything before exiting: no waiting needed.
        #expect(processesMentioning(started.directory).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: started.directory))
        try await expectNothingLeft(started, within: 1)
    }

    @Test func sigintStopsItTheSameWay() async throws {
        let started = try await startServer()
        started.process.child.signal(SIGINT)
        let result = await started.process.finish(timeout: .seconds(60))
        #expect(result.status == 0, "\(result.output)")
        try await expectNothingLeft(started, within: 1)
    }

    @Test func aKilledServerStillLeavesNothingBehind() async throws {
        let started = try await startServer()
        started.process.child.signal(SIGKILL)
        _ = await started.process.finish()
        // The guardian notices within a second and stops the cluster.
        try await expectNothingLeft(started, within: 30)
    }
}
