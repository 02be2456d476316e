import ArgumentParser
import FerryClient
import FerryCore
import FerryProtocol
import Foundation

/// The flags `ferry bench clone`, `bench export` and `bench import` share: how the job is
/// watched and where its figures go.
struct BenchJobOptions: ParsableArguments {
    @Option(name: .customLong("server-pid"), help: ArgumentHelp(
        "ferryd's pid on this machine: its CPU time (user + system, from /proc) over the job is reported.", valueName: "pid"))
    var serverPID: Int32?

    @Option(name: .customLong("job-timeout"), help: "Seconds to wait for the job's end before cancelling it and failing.")
    var timeout: Double = 7200

    @Option(name: .customLong("progress-interval"), help: "Seconds between progress lines while the job runs (0: only phase changes).")
    var progressInterval: Double = 5

    @Option(name: .customLong("result-file"), help: ArgumentHelp(
        "Also write the figures as JSON to this file (for scripts).", valueName: "file"))
    var resultFile: String?

    func validate() throws {
        guard timeout > 0, progressInterval >= 0 else { throw ValidationError("--job-timeout must be > 0 and --progress-interval ≥ 0") }
    }
}

/// What a benchmark adds to the common report once its job has ended: lines printed after the
/// job's figures, fields added to the result file, and whether the run failed anyway.
struct BenchJobExtras {
    var lines: [String] = []
    var fields: [String: Any] = [:]
    var failed = false
}

/// One job, timed: the routine of `ferry bench clone`, `bench export` and `bench import`.
/// Starts the job, watches it to its end (WatchJob; GetJob every 200 ms if the stream breaks),
/// and prints the wall time from StartJob to the terminal status, when each phase began, the
/// final progress figures and, with `--server-pid`, ferryd's CPU time over the job; writes the
/// figures as JSON with `--result-file`. Exits 1 unless the job SUCCEEDED.
struct BenchJobTiming {
    /// The job kind as the messages name it: "clone", "export", "import".
    let kind: String
    let options: BenchJobOptions

    /// Runs `request` as one job. `describe` follows the job id in the first line; `tables`
    /// words the line about the result's tables (count, rows); `finish` runs once the job has
    /// ended (before the report) and may add lines and result fields.
    func run(_ client: FerryConnection, _ request: StartJobRequest, describe: String,
             tables: (Int, Int64) -> String = { "verified: \($0) table(s), \($1) rows, checksums equal on both sides" },
             finish: (Job) async -> BenchJobExtras = { _ in BenchJobExtras() }) async throws {
        let clock = ContinuousClock()
        let cpuBefore = options.serverPID.flatMap(ProcessCPU.seconds(pid:))
        let started = clock.now
        let job: Job
        do {
            job = try await client.unary(FerryMethods.startJob, request)
        } catch let error as RPCError where error.code == .unimplemented {
            throw CLIError("this ferryd does not run \(kind) jobs: StartJob answered UNIMPLEMENTED (\(error.message))")
        } catch let error as RPCError {
            throw CLIError("StartJob of the \(kind) failed: \(error)")
        }
        print("bench \(kind): job \(job.id), \(describe); answered \(job.status.name) in \(seconds(clock.now - started))")

        var watch = Watcher(started: started, clock: clock, interval: options.progressInterval)
        watch.see(job)
        let deadline = started + .milliseconds(Int64(options.timeout * 1000))
        let final = try await follow(client, job: job, watch: &watch, deadline: deadline)
        let wall = clock.now - started
        let cpuAfter = options.serverPID.flatMap(ProcessCPU.seconds(pid:))

        let extras = await finish(final)
        report(final, wall: wall, watch: watch, cpu: cpuBefore.flatMap { before in cpuAfter.map { $0 - before } },
               tables: tables, extras: extras)
        if final.status != .succeeded || extras.failed { throw ExitCode(1) }
    }

    /// Follows the job to a terminal status and returns it as GetJob reads it then.
    private func follow(_ client: FerryConnection, job: Job, watch: inout Watcher, deadline: ContinuousClock.Instant) async throws -> Job {
        let id = job.id
        let clock = ContinuousClock()
        if !job.status.isTerminal {
            // The stream, bounded by the deadline; any break falls back to polling.
            let remaining = deadline - clock.now
            do {
                for try await event in try client.serverStream(FerryMethods.watchJob, .with { $0.jobID = id }, timeout: remaining) {
                    switch event.type {
                    case .snapshot: watch.see(event.job)
                    case .progress: watch.see(event.progress)
                    case .status: watch.see(event.status, error: event.hasError ? event.error : nil)
                    default: break
                    }
                    if watch.status.isTerminal { break }
                }
            } catch {
                if clock.now < deadline {
                    print("watch: the WatchJob stream ended with \(error); polling GetJob every 200 ms")
                }
            }
        }
        while true {
            let current = try await client.unary(FerryMethods.getJob, .with { $0.jobID = id })
            watch.see(current)
            if current.status.isTerminal { return current }
            if clock.now >= deadline {
                print("bench \(kind): no end after \(Int(options.timeout)) s; cancelling job \(id)")
                _ = try? await client.unary(FerryMethods.cancelJob, .with { $0.jobID = id })
                throw CLIError("the \(kind) job \(id) did not finish within \(Int(options.timeout)) s (cancelled)")
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    private func report(_ job: Job, wall: Duration, watch: Watcher, cpu: Double?, tables: (Int, Int64) -> String, extras: BenchJobExtras) {
        let wallSeconds = Double(wall.wholeNanoseconds) / 1e9
        let progress = job.progress
        print("== \(kind) job \(job.id): \(job.status.name) after \(String(format: "%.2f", wallSeconds)) s (StartJob sent to terminal status seen)")
        if job.hasStartedAt, job.hasFinishedAt {
            print(String(format: "server-side: RUNNING to \(job.status.name) in %.2f s (control database clock)",
                         job.finishedAt.date.timeIntervalSince(job.startedAt.date)))
        }
        if !watch.phases.isEmpty {
            var parts: [String] = []
            for (index, phase) in watch.phases.enumerated() {
                let end = index + 1 < watch.phases.count ? watch.phases[index + 1].at : wall
                parts.append("\(phase.name) \(seconds(phase.at))–\(seconds(end))")
            }
            print("phases (first seen, from StartJob): " + parts.joined(separator: ", "))
        }
        print(String(format: "progress: phase %@, tables %lld/%lld, rows %lld, bytes %lld (%.1f MB, %.1f MB/s over the wall time)",
                     progress.phase.isEmpty ? "-" : progress.phase, progress.tablesDone, progress.tablesTotal,
                     progress.rowsCopied, progress.bytesCopied, Double(progress.bytesCopied) / 1e6,
                     wallSeconds > 0 ? Double(progress.bytesCopied) / 1e6 / wallSeconds : 0))
        if !job.result.tables.isEmpty {
            print(tables(job.result.tables.count, job.result.tables.reduce(Int64(0)) { $0 + $1.rows }))
        }
        for line in extras.lines { print(line) }
        if let pid = options.serverPID {
            if let cpu {
                print(String(format: "ferryd CPU: %.2f s user+sys over the job, %.0f%% of the wall time (%d cores; pid %d)",
                             cpu, wallSeconds > 0 ? cpu / wallSeconds * 100 : 0, ProcessInfo.processInfo.activeProcessorCount, pid))
            } else {
                print("ferryd CPU: cannot read /proc/\(pid)/stat")
            }
        }
        if job.status != .succeeded {
            let error = job.hasError ? "\(job.error.code): \(job.error.message)\(job.error.retryable ? " (retryable)" : "")" : "no error recorded"
            print("FAILED: the \(kind) job ended \(job.status.name): \(error)")
        }
        if let resultFile = options.resultFile {
            var object: [String: Any] = [
                "jobId": job.id, "status": job.status.name, "wallSeconds": wallSeconds,
                "phase": progress.phase, "tablesDone": progress.tablesDone, "tablesTotal": progress.tablesTotal,
                "rowsCopied": progress.rowsCopied, "bytesCopied": progress.bytesCopied,
                "phases": watch.phases.map { ["name": $0.name, "atSeconds": Double($0.at.wholeNanoseconds) / 1e9] as [String: Any] },
            ]
            if let cpu { object["serverCPUSeconds"] = cpu }
            if job.hasError { object["error"] = ["code": job.error.code, "message": job.error.message] }
            object.merge(extras.fields) { _, extra in extra }
            do {
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                try data.write(to: URL(fileURLWithPath: resultFile))
            } catch {
                print("bench \(kind): cannot write the result file \(resultFile): \(error)")
            }
        }
    }
}

/// Registers instances with PutInstance (needs an admin token): (id, dsn) pairs whose dsn is set.
func putInstances(_ client: FerryConnection, _ instances: [(id: String, dsn: String?)]) async throws {
    for (id, dsn) in instances {
        guard let dsn else { continue }
        _ = try await client.unary(FerryMethods.putInstance, .with { $0.id = id; $0.dsn = dsn })
    }
}

/// "default" for 0 (the server's default), else the number.
func benchWidth(_ value: UInt32) -> String { value == 0 ? "default" : "\(value)" }

/// What the watch saw: the latest figures, when each phase was first seen, and progress lines.
private struct Watcher {
    let started: ContinuousClock.Instant
    let clock: ContinuousClock
    let interval: Double
    var status: JobStatus = .unspecified
    var progress = JobProgress()
    var phases: [(name: String, at: Duration)] = []
    var lastLine: ContinuousClock.Instant?

    init(started: ContinuousClock.Instant, clock: ContinuousClock, interval: Double) {
        self.started = started
        self.clock = clock
        self.interval = interval
    }

    mutating func see(_ job: Job) {
        if job.hasProgress { see(job.progress) }
        if job.status != status { see(job.status, error: job.hasError ? job.error : nil) }
    }

    mutating func see(_ progress: JobProgress) {
        self.progress = progress
        let now = clock.now
        if !progress.phase.isEmpty, phases.last?.name != progress.phase {
            phases.append((progress.phase, now - started))
            line(now)
        } else if interval > 0, !progress.phase.isEmpty, lastLine.map({ now - $0 >= .milliseconds(Int64(interval * 1000)) }) ?? true {
            line(now)
        }
    }

    mutating func see(_ status: JobStatus, error: JobError?) {
        guard status != self.status else { return }
        self.status = status
        let error = error.map { " \($0.code): \($0.message)" } ?? ""
        print("  \(seconds(clock.now - started)) status \(status.name)\(error)")
    }

    private mutating func line(_ now: ContinuousClock.Instant) {
        lastLine = now
        let inFlight = progress.inFlight.isEmpty ? "" : " [\(progress.inFlight.prefix(6).joined(separator: ", "))\(progress.inFlight.count > 6 ? ", …" : "")]"
        print(String(format: "  %@ %@: tables %lld/%lld, rows %lld, %.1f MB%@", seconds(now - started), progress.phase.isEmpty ? "-" : progress.phase,
                     progress.tablesDone, progress.tablesTotal, progress.rowsCopied, Double(progress.bytesCopied) / 1e6, inFlight))
    }
}

private extension JobStatus {
    var isTerminal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

private func seconds(_ duration: Duration) -> String {
    String(format: "%.2fs", Double(duration.wholeNanoseconds) / 1e9)
}
