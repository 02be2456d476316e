import ArgumentParser
import FerryClient
import FerryCore
import FerryProtocol
import Foundation
import SwiftProtobuf

/// `ferry bench jobs`: the job engine's figures against a ferryd whose job kinds finish on
/// their own (the benchmark script runs `ferryd-test`, whose CLONE steps through a timer).
///
/// 1. Admission: N concurrent StartJobs (`queue: true`) over several instances; latency of
///    each answer, and the most RUNNING jobs per instance seen by ListJobs while they drain.
/// 2. Start to RUNNING and start to executing, one job at a time on an idle server.
/// 3. Watch fan-out: W watchers of one long job; delivery lag (event time, from the control
///    database's clock, to arrival) and the server's RSS per watcher.
struct BenchJobs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs",
        abstract: "Admission latency under concurrent StartJobs, start-to-RUNNING latency, and WatchJob fan-out lag and memory.")

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("instance-dsn"), help: "DSN to register the benchmark's instances with (they are not written to).")
    var instanceDSN: String

    @Option(name: .customLong("instances"), help: "Instances the concurrent starts are spread over.")
    var instances: Int = 4

    @Option(name: .customLong("starts"), help: "Concurrent StartJobs.")
    var starts: Int = 200

    @Option(name: .customLong("cap"), help: "The server's maxRunningPerInstance, to check against.")
    var cap: Int = 3

    @Option(name: .customLong("sequential"), help: "Jobs started one at a time for the start-to-RUNNING figures.")
    var sequential: Int = 30

    @Option(name: .customLong("watchers"), help: "Watchers of one job.")
    var watchers: Int = 1000

    @Option(name: .customLong("watch-seconds"), help: "Length of the watched job.")
    var watchSeconds: Int = 10

    @Option(name: .customLong("server-pid"), help: "ferryd's pid on this machine, for its RSS.")
    var serverPID: Int32?

    func run() async throws {
        let configuration = try connection.clientConfiguration()
        let client = try await FerryConnection.connect(configuration)
        defer { client.close() }
        let runID = String(UUID().uuidString.prefix(6)).lowercased()
        let instanceIDs = (0..<instances).map { "bench-\(runID)-\($0)" }
        for id in instanceIDs {
            _ = try await client.unary(FerryMethods.putInstance, .with { $0.id = id; $0.dsn = instanceDSN })
        }
        try await admission(configuration, instanceIDs: instanceIDs)
        try await startToRunning(client, instance: instanceIDs[0])
        try await watchFanOut(configuration, client: client, instance: instanceIDs[0])
    }

    // MARK: 1. Admission

    private func admission(_ configuration: FerryClientConfiguration, instanceIDs: [String]) async throws {
        let connections = min(8, starts)
        var opened: [FerryConnection] = []
        for _ in 0..<connections { opened.append(try await FerryConnection.connect(configuration)) }
        let clients = opened
        defer { for client in clients { client.close() } }
        let clock = ContinuousClock()
        let begin = clock.now
        let results = await withTaskGroup(of: (Duration, String, String?).self) { group in
            for index in 0..<starts {
                group.addTask {
                    var request = StartJobRequest()
                    let instance = instanceIDs[index % instanceIDs.count]
                    request.clone = .clone(from: instance, "src", to: instance, "b\(index)")
                    request.queue = true
                    let started = clock.now
                    do {
                        let job = try await clients[index % clients.count].unary(FerryMethods.startJob, request)
                        return (clock.now - started, job.status.name, job.id)
                    } catch let error as RPCError {
                        return (clock.now - started, error.code.rawValue, nil)
                    } catch {
                        return (clock.now - started, "ERROR", nil)
                    }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let wall = clock.now - begin
        var answers: [String: Int] = [:]
        for (_, answer, _) in results { answers[answer, default: 0] += 1 }
        print("== admission: \(starts) concurrent StartJobs (queue: true) over \(instanceIDs.count) instances, \(connections) connections")
        print("answers: \(answers.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")), all answered in \(format(wall))")
        print("latency: \(percentiles(results.map(\.0)))")

        // Drain: ListJobs per instance until nothing is queued or running; the most RUNNING seen.
        let ids = Set(results.compactMap(\.2))
        var peak = 0
        let drainStart = clock.now
        while true {
            var open = 0
            for instance in instanceIDs {
                var request = ListJobsRequest()
                request.instance = instance
                request.pageSize = 500
                let page = try await clients[0].unary(FerryMethods.listJobs, request)
                let mine = page.jobs.filter { ids.contains($0.id) }
                peak = max(peak, mine.filter { $0.status == .running }.count)
                open += mine.filter { $0.status == .running || $0.status == .queued }.count
            }
            if open == 0 { break }
            if clock.now - drainStart > .seconds(600) {
                print("drain: still \(open) open after 600 s; giving up")
                break
            }
        }
        print("drain: all \(ids.count) jobs finished in \(format(clock.now - drainStart)); most RUNNING on one instance seen by ListJobs: \(peak) (cap \(cap))\(peak <= cap ? "" : "  ← OVER THE CAP")")
    }

    // MARK: 2. Start to RUNNING

    private func startToRunning(_ client: FerryConnection, instance: String) async throws {
        let clock = ContinuousClock()
        var toRunning: [Duration] = []
        var toExecuting: [Duration] = []
        for index in 0..<sequential {
            var request = StartJobRequest()
            request.clone = .clone(from: instance, "src", to: instance, "s\(index)")
            let started = clock.now
            let job = try await client.unary(FerryMethods.startJob, request)
            if job.status == .running { toRunning.append(clock.now - started) }
            // The first PROGRESS event is written once an executor claimed the job and ran it.
            for try await event in try client.serverStream(FerryMethods.watchJob, .with { $0.jobID = job.id }) {
                if event.type == .progress {
                    toExecuting.append(clock.now - started)
                    break
                }
            }
            _ = try await waitUntilFinished(client, job.id)
        }
        print("== start to RUNNING: \(sequential) jobs one at a time")
        print("StartJob answered RUNNING: \(percentiles(toRunning))")
        print("StartJob to first progress (claimed by an executor and running): \(percentiles(toExecuting))")
    }

    private func waitUntilFinished(_ client: FerryConnection, _ id: String) async throws -> Job {
        while true {
            let job = try await client.unary(FerryMethods.getJob, .with { $0.jobID = id })
            if job.status == .succeeded || job.status == .failed || job.status == .cancelled { return job }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    // MARK: 3. Watch fan-out

    private func watchFanOut(_ configuration: FerryClientConfiguration, client: FerryConnection, instance: String) async throws {
        var request = StartJobRequest()
        let steps = max(watchSeconds * 2, 1)
        request.clone = .clone(from: instance, "src", to: instance, "watched_\(watchSeconds * 1000)_\(steps)")
        let job = try await client.unary(FerryMethods.startJob, request)
        let id = job.id
        guard !id.isEmpty else { throw CLIError("StartJob returned no id") }
        let perConnection = 100
        var opened: [FerryConnection] = []
        for _ in 0..<((watchers + perConnection - 1) / perConnection) { opened.append(try await FerryConnection.connect(configuration)) }
        let clients = opened
        defer { for client in clients { client.close() } }

        let before = serverPID.flatMap(ServerMemory.read(pid:))
        let subscribed = Counter()
        let results = await withTaskGroup(of: WatchResult.self) { group in
            for index in 0..<watchers {
                group.addTask {
                    var result = WatchResult()
                    var subscribedAt = Date.distantFuture
                    do {
                        for try await event in try clients[index / perConnection].serverStream(FerryMethods.watchJob, .with { $0.jobID = id }) {
                            let arrived = Date()
                            if event.type == .snapshot {
                                subscribedAt = arrived
                                subscribed.add()
                                continue
                            }
                            result.events += 1
                            if event.type == .status { result.statuses.append(event.status) }
                            // Events written before this watcher subscribed are history, not lag.
                            if event.hasAt, event.at.date >= subscribedAt {
                                let at = event.at.date
                                result.lags.append(arrived.timeIntervalSince(at))
                            }
                        }
                    } catch {
                        result.error = "\(error)"
                    }
                    return result
                }
            }
            // RSS once every watcher is subscribed (the job is still running then).
            while subscribed.value < watchers { try? await Task.sleep(for: .milliseconds(20)) }
            let during = serverPID.flatMap(ServerMemory.read(pid:))
            var all: [WatchResult] = []
            for await result in group { all.append(result) }
            return (all, during)
        }
        let (all, during) = results
        let lags = all.flatMap(\.lags).map { Duration.milliseconds(Int64(max($0, 0) * 1000)) }
        let failed = all.filter { $0.error != nil }
        let complete = all.filter { $0.statuses.last == .succeeded }.count
        print("== watch fan-out: \(watchers) watchers of one \(watchSeconds) s job over \(clients.count) connections")
        print("watchers that saw the terminal SUCCEEDED: \(complete), failed: \(failed.count)\(failed.first.map { " (\($0.error!))" } ?? "")")
        print("events delivered: \(all.map(\.events).reduce(0, +)); delivery lag (event time to arrival): \(percentiles(lags))")
        if let before, let during {
            let perWatcher = Double(during.currentKiB - before.currentKiB) * 1024 / Double(watchers)
            print(String(format: "server RSS: %.1f MiB before, %.1f MiB with %d watchers: %.1f KiB per watcher", Double(before.currentKiB) / 1024, Double(during.currentKiB) / 1024, watchers, perWatcher / 1024))
        }
    }

    private func percentiles(_ samples: [Duration]) -> String {
        guard !samples.isEmpty else { return "no samples" }
        let sorted = samples.sorted()
        func at(_ p: Double) -> String { nearestRank(sorted, p).map(format) ?? "-" }
        return "p50 \(at(50)), p99 \(at(99)), max \(at(100)) (n=\(samples.count))"
    }

    private func format(_ duration: Duration) -> String {
        String(format: "%.1f ms", Double(duration.wholeNanoseconds) / 1e6)
    }
}

private struct WatchResult: Sendable {
    var events = 0
    var lags: [Double] = []
    var statuses: [JobStatus] = []
    var error: String?
}

private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
