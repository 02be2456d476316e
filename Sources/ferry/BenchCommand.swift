import ArgumentParser
import FerryClient
import FerryCore
import FerryProtocol
import Foundation

/// `ferry bench …`: load generators that print figures (no assertions; machines are noisy).
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks against a running ferryd.",
        subcommands: [BenchRPC.self, BenchJobs.self, BenchClone.self, BenchExport.self, BenchImport.self])
}

/// `ferry bench rpc`: C connections × S concurrent streams calling one unary method in a loop
/// for a fixed time; prints calls/s, latency percentiles and the server's peak RSS.
struct BenchRPC: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rpc",
        abstract: "Call Health/Check over TLS from C connections × S streams for a fixed time; print calls/s, p50/p99/p99.9 and the server's peak RSS.")

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("connections"), help: "TLS connections (C).")
    var connections: Int = 1

    @Option(name: .customLong("streams"), help: "Concurrent streams per connection (S); each runs one call at a time.")
    var streams: Int = 1

    @Option(name: .customLong("duration"), help: "Seconds to measure, after the warm-up.")
    var duration: Double = 10

    @Option(name: .customLong("warmup"), help: "Seconds of calls before measuring (not counted).")
    var warmup: Double = 1

    @Option(name: .customLong("server-pid"), help: ArgumentHelp(
        "Pid of the ferryd process (same machine): its peak RSS is reset before the run and read after it, and its CPU time read over the measured window, from /proc.",
        valueName: "pid"))
    var serverPID: Int32?

    func validate() throws {
        guard connections >= 1, streams >= 1 else { throw ValidationError("--connections and --streams must be ≥ 1") }
        guard duration > 0, warmup >= 0 else { throw ValidationError("--duration must be > 0 and --warmup ≥ 0") }
    }

    func run() async throws {
        let configuration = try connection.clientConfiguration()
        var clients: [FerryConnection] = []
        for _ in 0..<connections { clients.append(try await FerryConnection.connect(configuration)) }
        defer { for client in clients { client.close() } }

        let clock = ContinuousClock()
        let measureFrom = clock.now + .milliseconds(Int(warmup * 1000))
        let measureUntil = measureFrom + .milliseconds(Int(duration * 1000))
        // Reset the peak when measuring starts, so the figure belongs to this run.
        let peakWasReset: Bool
        if let pid = serverPID {
            try await Task.sleep(until: measureFrom - .milliseconds(Int(warmup * 500)), clock: clock)
            peakWasReset = ServerMemory.resetPeak(pid: pid)
        } else {
            peakWasReset = false
        }
        // The server's CPU time (user + system) over the measured window, for its CPU per call.
        async let serverCPU = ProcessCPU.window(pid: serverPID, from: measureFrom, until: measureUntil, clock: clock)

        // Each stream keeps its own samples (nanoseconds); merged once at the end.
        let results = await withTaskGroup(of: StreamResult.self) { group in
            for client in clients {
                for _ in 0..<streams {
                    group.addTask {
                        var result = StreamResult()
                        result.latencies.reserveCapacity(1 << 14)
                        while true {
                            let started = clock.now
                            if started >= measureUntil { break }
                            do {
                                _ = try await client.check(timeout: .seconds(30))
                                if started >= measureFrom {
                                    result.latencies.append(UInt64((clock.now - started).wholeNanoseconds))
                                }
                            } catch {
                                if started >= measureFrom { result.errors[String(describing: error).prefix(120).description, default: 0] += 1 }
                                if client.isGoingAway { break }
                            }
                        }
                        return result
                    }
                }
            }
            var merged = StreamResult()
            for await result in group {
                merged.latencies += result.latencies
                merged.errors.merge(result.errors, uniquingKeysWith: +)
            }
            return merged
        }

        let latencies = results.latencies.sorted()
        func percentile(_ p: Double) -> String {
            nearestRank(latencies, p).map { String(format: "%.3f ms", Double($0) / 1e6) } ?? "-"
        }
        let errorCount = results.errors.values.reduce(0, +)
        print("bench rpc: \(FerryMethods.healthCheck.info.name), \(connections) connection(s) × \(streams) stream(s), \(String(format: "%.1f", duration)) s measured after \(String(format: "%.1f", warmup)) s warm-up")
        print(String(format: "calls: %d ok, %d failed, %.0f calls/s", latencies.count, errorCount, Double(latencies.count) / duration))
        print("latency: p50 \(percentile(50)), p99 \(percentile(99)), p99.9 \(percentile(99.9)), max \(percentile(100))")
        for (error, count) in results.errors.sorted(by: { $0.value > $1.value }).prefix(5) {
            print("  error ×\(count): \(error)")
        }
        if let pid = serverPID {
            if let memory = ServerMemory.read(pid: pid) {
                print(String(format: "server RSS: peak %.1f MiB%@, now %.1f MiB (pid %d)",
                             Double(memory.peakKiB) / 1024, peakWasReset ? " during the run" : " since start",
                             Double(memory.currentKiB) / 1024, pid))
            } else {
                print("server RSS: cannot read /proc/\(pid)/status")
            }
            print(ProcessCPU.line(await serverCPU, calls: latencies.count, pid: pid))
        }
        if errorCount > 0 { throw ExitCode(1) }
    }
}

private struct StreamResult: Sendable {
    var latencies: [UInt64] = []
    var errors: [String: Int] = [:]
}
