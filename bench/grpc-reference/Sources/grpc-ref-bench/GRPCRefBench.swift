import ArgumentParser
import FerryHealthGRPC
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2

/// `grpc-ref-bench`: `ferry bench rpc`'s load, against `grpc-ref-server`: C GRPCClients (one
/// HTTP/2 connection each) × S concurrent tasks each calling Health/Check in a loop for a fixed
/// time, printed in the same lines, plus the server's CPU time per call.
@main
struct GRPCRefBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "grpc-ref-bench",
        abstract: "Call ferry.v1.Health/Check on grpc-ref-server from C connections × S streams for a fixed time; print calls/s, p50/p99/p99.9, and the server's RSS and CPU per call.")

    @Option(help: "The server's address.")
    var host: String = "127.0.0.1"

    @Option(help: "The server's port.")
    var port: Int

    @Option(name: .customLong("ca-file"), help: ArgumentHelp("Certificate(s) to trust for the server (PEM).", valueName: "file"))
    var caFile: String

    @Option(help: "HTTP/2 connections (C): one GRPCClient each.")
    var connections: Int = 1

    @Option(help: "Concurrent streams per connection (S); each runs one call at a time.")
    var streams: Int = 1

    @Option(help: "Seconds to measure, after the warm-up.")
    var duration: Double = 10

    @Option(help: "Seconds of calls before measuring (not counted).")
    var warmup: Double = 1

    @Option(name: .customLong("server-pid"), help: ArgumentHelp(
        "Pid of the server process (same machine): its peak RSS and its CPU time over the measured window, from /proc.",
        valueName: "pid"))
    var serverPID: Int32?

    func validate() throws {
        guard connections >= 1, streams >= 1 else { throw ValidationError("--connections and --streams must be ≥ 1") }
        guard duration > 0, warmup >= 0 else { throw ValidationError("--duration must be > 0 and --warmup ≥ 0") }
    }

    func run() async throws {
        var clients: [GRPCClient<HTTP2ClientTransport.Posix>] = []
        for _ in 0..<connections {
            let transport = try HTTP2ClientTransport.Posix(
                target: .ipv4(address: host, port: port),
                transportSecurity: .tls { $0.trustRoots = .certificates([.file(path: caFile, format: .pem)]) })
            clients.append(GRPCClient(transport: transport))
        }
        let failed = try await withThrowingTaskGroup(of: Void.self, returning: Bool.self) { connectionTasks in
            for client in clients {
                connectionTasks.addTask { try await client.runConnections() }
            }
            defer { for client in clients { client.beginGracefulShutdown() } }
            // One call each first, so every connection (TCP, TLS, HTTP/2 settings) is up before
            // the clock starts, as `ferry bench rpc` connects before it starts.
            for client in clients { _ = try await client.ferryHealthCheck() }
            return await measure(clients)
        }
        if failed { throw ExitCode(1) }
    }

    /// Runs the load and prints the figures; true when some call failed.
    private func measure(_ clients: [GRPCClient<HTTP2ClientTransport.Posix>]) async -> Bool {
        let clock = ContinuousClock()
        let measureFrom = clock.now + .milliseconds(Int(warmup * 1000))
        let measureUntil = measureFrom + .milliseconds(Int(duration * 1000))
        let options: CallOptions = {
            var options = CallOptions.defaults
            options.timeout = .seconds(30)
            return options
        }()

        // The server's peak RSS is reset half-way through the warm-up, as `ferry bench rpc` does;
        // its CPU time is read at the start and at the end of the measured window.
        let peakWasReset = Task {
            guard let pid = serverPID else { return false }
            try? await Task.sleep(until: measureFrom - .milliseconds(Int(warmup * 500)), clock: clock)
            return ServerMemory.resetPeak(pid: pid)
        }
        let cpuWindow = Task { await ProcessCPU.window(pid: serverPID, from: measureFrom, until: measureUntil, clock: clock) }

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
                                _ = try await client.ferryHealthCheck(options: options)
                                if started >= measureFrom {
                                    result.latencies.append(UInt64((clock.now - started).nanoseconds))
                                }
                            } catch {
                                if started >= measureFrom { result.errors[String(describing: error).prefix(120).description, default: 0] += 1 }
                                if let error = error as? RuntimeError, error.code == .clientIsStopped { break }
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
        print("bench rpc: \(FerryHealth.check.fullyQualifiedMethod) (grpc-swift-2), \(connections) connection(s) × \(streams) stream(s), \(String(format: "%.1f", duration)) s measured after \(String(format: "%.1f", warmup)) s warm-up")
        print(String(format: "calls: %d ok, %d failed, %.0f calls/s", latencies.count, errorCount, Double(latencies.count) / duration))
        print("latency: p50 \(percentile(50)), p99 \(percentile(99)), p99.9 \(percentile(99.9)), max \(percentile(100))")
        for (error, count) in results.errors.sorted(by: { $0.value > $1.value }).prefix(5) {
            print("  error ×\(count): \(error)")
        }
        if let pid = serverPID {
            let wasReset = await peakWasReset.value
            if let memory = ServerMemory.read(pid: pid) {
                print(String(format: "server RSS: peak %.1f MiB%@, now %.1f MiB (pid %d)",
                             Double(memory.peakKiB) / 1024, wasReset ? " during the run" : " since start",
                             Double(memory.currentKiB) / 1024, pid))
            } else {
                print("server RSS: cannot read /proc/\(pid)/status")
            }
            print(ProcessCPU.line(await cpuWindow.value, calls: latencies.count, pid: pid))
        }
        return errorCount > 0
    }
}

extension Duration {
    fileprivate var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

private struct StreamResult: Sendable {
    var latencies: [UInt64] = []
    var errors: [String: Int] = [:]
}
