import FerryClient
import FerryProtocol
import FerryTestSupport
import Foundation
import Testing

/// The ops endpoint's metrics, scraped from a real replica while a job runs: the series
/// docs/operations.md names exist, and the engine's counters move with the job.
@Suite(.serialized) struct MetricsTests {
    /// Series name (with its labels, as Prometheus prints them) → value, from one scrape.
    static func scrape(_ server: ServingFerryd) throws -> [String: Double] {
        let port = try #require(server.ready["opsURL"].flatMap { $0.split(separator: ":").last }.flatMap { Int($0) })
        let text = try RawSocket.get(port: port, path: "/metrics")
        let body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined()
        var series: [String: Double] = [:]
        for line in body.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            series[String(line[..<space])] = value
        }
        return series
    }

    /// The series docs/operations.md lists, with their type and whether they exist from the start.
    static func documented() throws -> [(name: String, type: String, atStart: Bool)] {
        let text = try String(contentsOf: docs("operations.md"), encoding: .utf8)
        return text.split(separator: "\n").compactMap { line -> (String, String, Bool)? in
            guard line.hasPrefix("| `ferry_") else { return nil }
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            return (cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`")), cells[1], cells[3] == "at start")
        }
    }

    static func docs(_ file: String) -> URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/\(file)")
    }

    /// The series a dashboard's queries read: every `ferry_…` name in it, a histogram's
    /// `_bucket`, `_count` and `_sum` series counted as the histogram.
    static func seriesUsed(byDashboard text: String, histograms: Set<String>) throws -> Set<String> {
        let names = text.matches(of: /ferry_[a-z0-9_]+/).map { String($0.output) }
        return Set(names.map { name in
            for suffix in ["_bucket", "_count", "_sum"] where name.hasSuffix(suffix) {
                let base = String(name.dropLast(suffix.count))
                if histograms.contains(base) { return base }
            }
            return name
        })
    }

    /// The value of `name` with these labels (all of them, in any order), or nil.
    static func value(_ series: [String: Double], _ name: String, _ labels: [String: String] = [:]) -> Double? {
        series.first { key, _ in
            guard key == name || key.hasPrefix(name + "{") else { return false }
            return labels.allSatisfy { key.contains("\($0.key)=\"\($0.value)\"") }
        }?.value
    }

    @Test func theDocumentedSeriesExistAndTheEngineCountersMoveWithAJob() async throws {
        try await Replicas.with(count: 1, instances: 1, jobMs: 4000, jobSteps: 8) { replicas in
            let server = replicas.servers[0]
            let documented = try Self.documented()
            try #require(documented.count >= 15, "the metrics table of docs/operations.md: \(documented)")
            let first = try Self.scrape(server)
            for series in documented where series.atStart {
                #expect(Self.value(first, series.name) != nil, "\(series.name) is documented as present from the start")
            }
            #expect(Self.value(first, "ferry_executor_slots") == 4)

            let client = try await replicas.client(0)
            defer { client.close() }
            let job = try await client.startJob(.clone(from: "i0", "src", to: "i0", "dst"))
            _ = try await client.waitFor(job.id) { $0.progress.rowsCopied >= 2 }
            try await waitUntil("the copy counter moves past its first rows") {
                (Self.value(try Self.scrape(server), "ferry_rows_copied_total", ["kind": "clone"]) ?? 0) >= 2
            }
            let during = try Self.scrape(server)
            #expect(Self.value(during, "ferry_executor_busy") == 1)
            let rowsDuring = try #require(Self.value(during, "ferry_rows_copied_total", ["kind": "clone"]))
            #expect(Self.value(during, "ferry_admission_decisions_total", ["outcome": "admitted"]) == 1)

            // A refusal is counted with its code.
            #expect(await statusCode { _ = try await client.startJob(.clone(from: "nowhere", "src", to: "i0", "x")) } == .notFound)
            _ = try await client.waitFor(job.id) { $0.status.isTerminal }
            try await waitUntil("the job's end is counted") {
                Self.value(try Self.scrape(server), "ferry_jobs_finished_total", ["kind": "clone", "status": "succeeded"]) == 1
            }
            let after = try Self.scrape(server)
            #expect(try #require(Self.value(after, "ferry_rows_copied_total", ["kind": "clone"])) == 8, "8 steps, one row each")
            #expect(rowsDuring < 8)
            #expect(Self.value(after, "ferry_executor_busy") == 0)
            #expect(Self.value(after, "ferry_admission_decisions_total", ["outcome": "refused", "code": "NOT_FOUND"]) == 1)
            #expect(Self.value(after, "ferry_job_duration_seconds_count", ["kind": "clone", "status": "succeeded"]) == 1)
            #expect((Self.value(after, "ferry_rpc_calls_total", ["method": "ferry.v1.Jobs/StartJob", "code": "OK"]) ?? 0) >= 1)
            // Each GetJob reads the job on a connection of the shared pool: every lease's wait is recorded.
            let getJobs = try #require(Self.value(after, "ferry_rpc_calls_total", ["method": "ferry.v1.Jobs/GetJob", "code": "OK"]))
            let leases = try #require(Self.value(after, "ferry_control_pool_wait_seconds_count"), "the pool waits are recorded")
            #expect(leases >= getJobs)
            #expect(leases > Self.value(first, "ferry_control_pool_wait_seconds_count") ?? 0)
            #expect(Self.value(after, "ferry_control_pool_wait_seconds_bucket", ["le": "+Inf"]) == leases)
            // One replica, so it leads (within a lease period).
            try await waitUntil("the only replica becomes the leader") { Self.value(try Self.scrape(server), "ferry_leader") == 1 }
        }
    }

    /// Queued and running jobs per instance come from the control database, so only the
    /// leader exports them (summing across replicas must not multiply them), and an instance
    /// whose jobs end shows 0 rather than its last figure.
    @Test func theLeaderAloneExportsQueuedAndRunningJobsPerInstanceAndTheyDropToZero() async throws {
        try await Replicas.with(count: 2, instances: 2, jobMs: 4000, jobSteps: 4, arguments: ["--max-running-per-instance", "1"]) { replicas in
            var leader = 0
            try await waitUntil("one replica leads, the other does not") {
                let leading = try replicas.servers.map { Self.value(try Self.scrape($0), "ferry_leader") }
                guard leading.sorted(by: { ($0 ?? -1) < ($1 ?? -1) }) == [0, 1] else { return false }
                leader = try #require(leading.firstIndex(of: 1))
                return true
            }
            let server = replicas.servers[leader]
            let client = try await replicas.client(0)
            defer { client.close() }
            let first = try await client.startJob(cloneRequest(instance: "i0", target: "a"))
            let second = try await client.startJob(cloneRequest(instance: "i0", target: "b", queue: true))
            #expect(second.status == .queued, "the cap of 1 queues the second job on i0")

            try await waitUntil("the leader exports one running and one queued job on i0") {
                let series = try Self.scrape(server)
                return Self.value(series, "ferry_jobs_running", ["instance_id": "i0"]) == 1
                    && Self.value(series, "ferry_jobs_queued", ["instance_id": "i0"]) == 1
            }
            let during = try Self.scrape(server)
            #expect(Self.value(during, "ferry_jobs_running", ["instance_id": "i1"]) == 0, "a registered instance without jobs shows 0")
            #expect(Self.value(during, "ferry_jobs_queued", ["instance_id": "i1"]) == 0)
            let follower = try Self.scrape(replicas.servers[1 - leader])
            #expect(Self.value(follower, "ferry_leader") == 0)
            #expect(Self.value(follower, "ferry_jobs_running") == nil, "only the leader exports the cluster's counts")
            #expect(Self.value(follower, "ferry_jobs_queued") == nil)

            for job in [first, second] { _ = try await client.waitFor(job.id) { $0.status.isTerminal } }
            try await waitUntil("i0's counts drop to 0") {
                let series = try Self.scrape(server)
                return Self.value(series, "ferry_jobs_running", ["instance_id": "i0"]) == 0
                    && Self.value(series, "ferry_jobs_queued", ["instance_id": "i0"]) == 0
            }
        }
    }

    /// The example dashboard reads only documented series, and shows every one of them.
    @Test func theGrafanaDashboardUsesExactlyTheDocumentedSeries() throws {
        let documented = try Self.documented()
        let names = Set(documented.map(\.name))
        let histograms = Set(documented.filter { $0.type == "histogram" }.map(\.name))
        let data = try Data(contentsOf: Self.docs("grafana-dashboard.json"))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        #expect(panels.count >= 13)
        let text = try #require(String(data: data, encoding: .utf8))
        #expect(text.contains("${DS_PROMETHEUS}"), "the datasource is the importer's choice")

        let used = try Self.seriesUsed(byDashboard: text, histograms: histograms)
        #expect(used.subtracting(names).isEmpty, "the dashboard reads series docs/operations.md does not list: \(used.subtracting(names).sorted())")
        #expect(names.subtracting(used).isEmpty, "documented series without a panel: \(names.subtracting(used).sorted())")
        // The check itself: a misspelt series, or a histogram suffix on a counter, is caught.
        let wrong = try Self.seriesUsed(byDashboard: "rate(ferry_rpc_call_total[5m]) ferry_jobs_finished_total_sum", histograms: histograms)
        #expect(wrong.subtracting(names) == ["ferry_rpc_call_total", "ferry_jobs_finished_total_sum"])
    }
}
