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

    /// The series docs/operations.md lists, with whether they exist from the start.
    static func documented() throws -> [(name: String, atStart: Bool)] {
        let page = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/operations.md")
        let text = try String(contentsOf: page, encoding: .utf8)
        return text.split(separator: "\n").compactMap { line -> (String, Bool)? in
            guard line.hasPrefix("| `ferry_") else { return nil }
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            return (cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`")), cells[3] == "at start")
        }
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
            for (name, atStart) in documented where atStart {
                #expect(Self.value(first, name) != nil, "\(name) is documented as present from the start")
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
            // One replica, so it leads (within a lease period).
            try await waitUntil("the only replica becomes the leader") { Self.value(try Self.scrape(server), "ferry_leader") == 1 }
        }
    }
}
