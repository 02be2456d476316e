// clone-follower: a small service built on the FerryClient library (docs/client-library.md).
// It starts a clone, follows it to its end printing progress, prints the verified result,
// and reruns the job while it fails retryably.
//
//   FERRY_ADDRESS=ferry-a:7443,ferry-b:7443 FERRY_CA_FILE=ca.pem FERRY_TOKEN_FILE=ops.token \
//     clone-follower --request-id nightly-acme eu-1/acme eu-2/acme
//
// Run it again with the same --request-id (after a crash, a deploy, a Ctrl-C) and it picks
// up the same job, and the same reruns, instead of starting new ones.

import FerryClient
import FerryProtocol
import Foundation

/// Where a tenant is: `instance/tenant`.
struct Place: Sendable, CustomStringConvertible {
    var instance: String
    var tenant: String
    var description: String { "\(instance)/\(tenant)" }
}

struct Settings: Sendable {
    var configuration: FerryClientConfiguration
    var source: Place
    var target: Place
    /// The idempotency key of the StartJob; reruns use keys derived from it.
    var requestID: String
    /// The last attempt of the lineage this service makes (1 = never rerun).
    var maxAttempts: Int32
}

enum Limits {
    /// The deadline of each unary call (retries included).
    static let callTimeout: Duration = .seconds(30)
}

/// Ctrl-C: we stop following; the job goes on on the server.
struct Interrupted: Error {
    var jobID: String?
}

func log(_ line: String) {
    print(line)
    fflush(nil)  // each line reaches a pipe or a log collector at once
}

func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("clone-follower: \(message)\n".utf8))
    exit(status)
}

// MARK: Settings from the environment and the arguments

func readSettings() -> Settings {
    let usage = """
        usage: clone-follower [--request-id KEY] [--max-attempts N] SOURCE_INSTANCE/TENANT TARGET_INSTANCE/TENANT
        environment: FERRY_ADDRESS (host:port, comma-separated for several replicas; default 127.0.0.1:7443),
          FERRY_CA_FILE, FERRY_TOKEN_FILE (or FERRY_TOKEN), FERRY_CLIENT_CERT and FERRY_CLIENT_KEY (mTLS)
        """
    let environment = ProcessInfo.processInfo.environment
    func variable(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }

    var requestID = UUID().uuidString.lowercased()
    var maxAttempts: Int32 = 3
    var places: [Place] = []
    var arguments = CommandLine.arguments.dropFirst()
    while let argument = arguments.popFirst() {
        switch argument {
        case "--request-id":
            guard let key = arguments.popFirst(), !key.isEmpty, key.utf8.count <= 100 else { fail("--request-id needs a key of 1 to 100 bytes\n\(usage)", status: 64) }
            requestID = key
        case "--max-attempts":
            guard let text = arguments.popFirst(), let n = Int32(text), n >= 1 else { fail("--max-attempts needs a number ≥ 1\n\(usage)", status: 64) }
            maxAttempts = n
        default:
            let parts = argument.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { fail("expected instance/tenant, got '\(argument)'\n\(usage)", status: 64) }
            places.append(Place(instance: parts[0], tenant: parts[1]))
        }
    }
    guard places.count == 2 else { fail("name the source and the target\n\(usage)", status: 64) }

    let addresses: [FerryAddress]
    do {
        addresses = try (variable("FERRY_ADDRESS") ?? "127.0.0.1:7443").split(separator: ",").map {
            try FerryAddress(parsing: $0.trimmingCharacters(in: .whitespaces))
        }
    } catch {
        fail("FERRY_ADDRESS: \(error)", status: 64)
    }
    guard !addresses.isEmpty else { fail("FERRY_ADDRESS names no address", status: 64) }

    var token = variable("FERRY_TOKEN")
    if let file = variable("FERRY_TOKEN_FILE") {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { fail("cannot read the token file \(file)", status: 64) }
        token = text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    var configuration = FerryClientConfiguration(addresses: addresses, trustRootsFile: variable("FERRY_CA_FILE"), token: token)
    configuration.clientCertificateFile = variable("FERRY_CLIENT_CERT")
    configuration.clientKeyFile = variable("FERRY_CLIENT_KEY")
    // Ride out a rolling deploy of every replica: keep trying for a minute, not 30 s.
    configuration.reconnectTimeout = .seconds(60)
    return Settings(configuration: configuration, source: places[0], target: places[1],
                    requestID: requestID, maxAttempts: maxAttempts)
}

// MARK: Start, follow, rerun

/// Clones, follows and reruns until the lineage succeeds (true) or cannot (false).
func cloneAndFollow(_ settings: Settings) async throws -> Bool {
    let client = FerryClient(settings.configuration)
    defer { client.close() }
    var current: String?
    do {
        var job = try await start(settings, client)
        current = job.id
        log("job \(job.id): \(job.status.name), attempt \(job.attempt) (request id \(settings.requestID))")
        while true {
            // StartJob and RerunJob may return a job that already ended (a repeated request id).
            let finished = job.status.isTerminal ? job : try await follow(job.id, client)
            switch finished.status {
            case .succeeded:
                report(finished)
                return true
            case .failed where finished.error.retryable && finished.attempt < settings.maxAttempts:
                log("attempt \(finished.attempt) failed, retryable: \(finished.error.code): \(finished.error.message)")
                try await Task.sleep(for: .seconds(5 * Int(finished.attempt)))
                job = try await rerun(finished, settings, client)
                current = job.id
                log("job \(job.id): \(job.status.name), attempt \(job.attempt), resuming \(finished.id)")
            case .failed:
                log("FAILED (\(finished.error.retryable ? "retryable, attempts used up" : "not retryable")): \(finished.error.code): \(finished.error.message)")
                return false
            default:
                log("\(finished.status.name): job \(finished.id) (RerunJob resumes it)")
                return false
            }
        }
    } catch where Task.isCancelled {
        // A cancelled call or watch may end with any error, or none: the task's flag decides.
        throw Interrupted(jobID: current)
    }
}

/// StartJob with the request id: repeated after UNAVAILABLE by the client itself, and a
/// rerun of this service with the same key returns the job the first run made.
func start(_ settings: Settings, _ client: FerryClient) async throws -> Job {
    var request = StartJobRequest.clone(from: settings.source.instance, settings.source.tenant,
                                        to: settings.target.instance, settings.target.tenant,
                                        requestID: settings.requestID)
    do {
        return try await client.startJob(request, timeout: Limits.callTimeout)
    } catch let error as RPCError where error.code == .resourceExhausted && error.details?["runningJobIds"] != nil {
        // Refused (nothing was made, the key is still free): say what is in the way, then
        // wait in line. `queue` is not part of what a repeated key must match.
        log("busy: \(obstacles(error.details)); queueing")
        request.queue = true
        return try await client.startJob(request, timeout: Limits.callTimeout)
    }
}

/// What RESOURCE_EXHAUSTED's details say stands in the way of a StartJob.
func obstacles(_ details: JSONValue?) -> String {
    func strings(_ key: String) -> [String] {
        guard case .array(let values)? = details?[key] else { return [] }
        return values.compactMap { if case .string(let text) = $0 { text } else { nil } }
    }
    func number(_ key: String) -> Int? {
        guard case .number(let value)? = details?[key] else { return nil }
        return Int(value)
    }
    var parts: [String] = []
    let running = strings("runningJobIds")
    if !running.isEmpty {
        parts.append("running jobs \(running.joined(separator: ", ")) (at most \(number("maxRunningPerInstance") ?? 0) per instance)")
    }
    let conflicts = strings("tenantConflictJobIds")
    if !conflicts.isEmpty { parts.append("writing the same tenant: \(conflicts.joined(separator: ", "))") }
    if let queued = number("queuedAhead") { parts.append("\(queued) queued ahead") }
    return parts.isEmpty ? "no details" : parts.joined(separator: "; ")
}

/// Follows a job with WatchJob until its terminal STATUS, then reads it whole.
func follow(_ jobID: String, _ client: FerryClient) async throws -> Job {
    var lastPrinted: ContinuousClock.Instant?
    var phase = ""
    let events = client.watchJob(jobID) { address, afterSeq in
        log("connection lost; watching again on \(address) after event \(afterSeq)")
    }
    for try await event in events {
        switch event.type {
        case .snapshot:
            // The first event, and the first after each reconnection: the whole job now.
            phase = event.job.progress.phase
            log("\(event.job.status.name) \(describe(event.job.progress))")
        case .progress:
            // Up to four a second; print phase changes, else one line a second.
            let now = ContinuousClock.now
            if event.progress.phase != phase || lastPrinted.map({ now - $0 >= .seconds(1) }) ?? true {
                phase = event.progress.phase
                lastPrinted = now
                log("  \(describe(event.progress))")
            }
        case .status:
            // Never lost or repeated, reconnections included.
            log(event.status.name + (event.hasError ? " \(event.error.code): \(event.error.message)" : ""))
        default:
            break
        }
    }
    // The sequence also ends quietly when this task is cancelled.
    try Task.checkCancellation()
    // It ended after the terminal STATUS; GetJob has the result (and is retried on UNAVAILABLE).
    return try await client.getJob(jobID, timeout: Limits.callTimeout)
}

/// Reruns a failed job with a key derived from it: asking again (this service restarted)
/// returns the same rerun.
func rerun(_ failed: Job, _ settings: Settings, _ client: FerryClient) async throws -> Job {
    do {
        return try await client.rerunJob(failed.id, queue: true, requestID: "\(settings.requestID)/rerun-of/\(failed.id)",
                                         timeout: Limits.callTimeout)
    } catch let error as RPCError where error.code == .failedPrecondition {
        // Someone else reran it already (a job has at most one rerun): follow that one.
        guard case .string(let successor)? = error.details?["rerunJobId"] else { throw error }
        return try await client.getJob(successor, timeout: Limits.callTimeout)
    }
}

// MARK: Printing

func describe(_ progress: JobProgress) -> String {
    var text = progress.phase.isEmpty ? "(no progress yet)" : progress.phase
    if progress.tablesTotal > 0 { text += ": \(progress.tablesDone)/\(progress.tablesTotal) tables" }
    if progress.rowsCopied > 0 { text += ", \(progress.rowsCopied) rows, \(megabytes(progress.bytesCopied))" }
    if !progress.current.isEmpty { text += " (\(progress.current))" }
    return text
}

func megabytes(_ bytes: Int64) -> String {
    String(format: "%.1f MB", Double(bytes) / 1_000_000)
}

func report(_ job: Job) {
    let tables = job.result.tables
    let rows = tables.reduce(0) { $0 + $1.rows }
    let clone = job.params.clone
    log("SUCCEEDED: \(clone.sourceInstance)/\(clone.sourceTenant) -> \(clone.targetInstance)/\(clone.targetTenant), "
        + "attempt \(job.attempt), \(tables.count) tables and \(rows) rows verified")
    for table in tables {
        log("  \(table.tenant).\(table.table): \(table.rows) rows, checksum \(table.checksum)")
    }
}

// MARK: Main

let settings = readSettings()
let work = Task { try await cloneAndFollow(settings) }
signal(SIGINT, SIG_IGN)
let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
interrupt.setEventHandler { work.cancel() }
interrupt.resume()

do {
    exit(try await work.value ? 0 : 1)
} catch let interrupted as Interrupted {
    // Stopping the watch cancelled the call, not the job (that is CancelJob).
    let job = interrupted.jobID.map { "stopped following job \($0), which is not cancelled; " } ?? ""
    fail("interrupted: \(job)run again with --request-id \(settings.requestID) to pick it up", status: 130)
} catch let error as RPCError {
    fail("\(error.code.rawValue): \(error.message)" + (error.details.map { " \($0.jsonText)" } ?? ""), status: 1)
} catch {
    fail("\(error)", status: 1)
}
