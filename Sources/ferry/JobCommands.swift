import ArgumentParser
import FerryClient
import FerryProtocol
import Foundation

/// What `start …` and `rerun` share: admission, idempotency, and what is printed.
struct SubmitOptions: ParsableArguments {
    @Flag(name: .customLong("queue"), help: "When the instance is at its cap, wait in line (QUEUED) instead of being refused.")
    var queue = false

    @Option(name: .customLong("request-id"), help: ArgumentHelp(
        "Idempotency key: repeating the command with the same key returns the job the first one made. Default: a fresh one, so a call cut off by a lost connection is safely sent again.",
        valueName: "key"))
    var requestID: String?

    /// The key sent: the user's, or a fresh one (which makes the call safe to repeat after a
    /// lost connection, without making two commands one).
    var effectiveRequestID: String { requestID ?? "ferry-cli-" + UUID().uuidString.lowercased() }

    @Flag(name: .customLong("watch"), help: "Follow the job to its end (exit code from its status).")
    var watch = false

    @Flag(name: [.customShort("q"), .customLong("quiet")], help: "Print only the job id.")
    var quiet = false

    @OptionGroup var output: OutputOptions
}

/// Prints a job StartJob, RerunJob or CancelJob returned, then follows it when asked.
func submitted(_ job: Job, verb: String, client: FerryClient, options: SubmitOptions, connection: ConnectionOptions) async throws {
    if options.watch {
        if options.output.format != .json, !options.quiet {
            FileHandle.standardError.write(Data("\(verb) \(job.kind.label) job \(job.id) (\(job.status.name))\n".utf8))
        }
        try await follow(job.id, client: client, format: options.output.format, timeout: connection.callTimeout)
        return
    }
    if options.quiet {
        print(job.id)
    } else if options.output.format == .json {
        try printJSON(job)
    } else {
        print("\(verb) \(job.kind.label) job \(job.id) (\(job.status.name)): \(JobText.route(job))")
        print("follow it with: ferry watch \(job.id)")
    }
}

// MARK: start

struct Start: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a job: clone, export, import or replace.",
        discussion: """
        Examples:
          ferry start clone --from eu-1/acme --to eu-2/acme --watch
          ferry start export --from eu-1/acme --ttl 30d -q
          ferry start import --artifact 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70 --to eu-2/acme_restored
          ferry start replace --from eu-1 --to eu-1-new --watch
        """,
        subcommands: [StartClone.self, StartExport.self, StartImport.self, StartReplace.self])
}

/// Runs StartJob for a request the subcommand built.
func start(_ request: StartJobRequest, connection: ConnectionOptions, options: SubmitOptions) async throws {
    var request = request
    request.queue = options.queue
    request.requestID = options.effectiveRequestID
    let client = try await connection.connect()
    defer { client.close() }
    let job = try await client.startJob(request, timeout: connection.callTimeout)
    try await submitted(job, verb: "started", client: client, options: options, connection: connection)
}

struct StartClone: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clone",
        abstract: "Copy a tenant to a new tenant, on the same or another instance, verified by row counts and checksums.",
        discussion: """
        Examples:
          ferry start clone --from eu-1/acme --to eu-2/acme --watch
          ferry start clone --from eu-1/acme --to eu-1/acme_staging --queue --request-id nightly-2026-11-30
        """)

    @Option(name: .customLong("from"), help: ArgumentHelp("The tenant to copy.", valueName: "instance/tenant"))
    var from: String
    @Option(name: .customLong("to"), help: ArgumentHelp("The new tenant (must not exist).", valueName: "instance/tenant"))
    var to: String
    @Option(name: .customLong("copy-width"), help: "Tables (or block ranges) copied at once; default: the server's.")
    var copyWidth: UInt32?
    @Option(name: .customLong("index-width"), help: "Index builds at once; default: the server's.")
    var indexWidth: UInt32?
    @Option(name: .customLong("split-table-bytes"), help: "Split tables larger than this into parallel block ranges; default: the server's.")
    var splitTableBytes: Int64?
    @OptionGroup var submit: SubmitOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let source = try instanceAndTenant(from, flag: "--from")
        let target = try instanceAndTenant(to, flag: "--to")
        var params = CloneParams.clone(from: source.instance, source.tenant, to: target.instance, target.tenant)
        params.copyWidth = copyWidth ?? 0
        params.indexWidth = indexWidth ?? 0
        params.splitTableBytes = splitTableBytes ?? 0
        try await start(.with { $0.clone = params }, connection: connection, options: submit)
    }
}

struct StartExport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a tenant to a checksummed archive (an artifact) in ferryd's artifact store.",
        discussion: """
        Examples:
          ferry start export --from eu-1/acme --ttl 30d --watch
          ferry artifacts list --tenant acme
        """)

    @Option(name: .customLong("from"), help: ArgumentHelp("The tenant to export.", valueName: "instance/tenant"))
    var from: String
    @Option(name: .customLong("ttl"), help: ArgumentHelp("How long the archive is kept: seconds, or with s, m, h, d (e.g. 30d); default: the server's.", valueName: "duration"))
    var ttl: String?
    @Option(name: .customLong("copy-width"), help: "Files written at once; default: the server's.")
    var copyWidth: UInt32?
    @Option(name: .customLong("split-table-bytes"), help: "Write tables larger than this as several files; default: the server's.")
    var splitTableBytes: Int64?
    @OptionGroup var submit: SubmitOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let source = try instanceAndTenant(from, flag: "--from")
        let ttlSeconds = try ttl.map { try parseSeconds($0, flag: "--ttl") } ?? 0
        try await start(.with {
            $0.export = .with {
                $0.sourceInstance = source.instance
                $0.sourceTenant = source.tenant
                $0.ttlSeconds = ttlSeconds
                $0.copyWidth = copyWidth ?? 0
                $0.splitTableBytes = splitTableBytes ?? 0
            }
        }, connection: connection, options: submit)
    }
}

struct StartImport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Create a tenant from an export's archive, verified against the archive's manifest.",
        discussion: """
        Examples:
          ferry start import --artifact 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70 --to eu-2/acme_restored --watch
        """)

    @Option(name: .customLong("artifact"), help: ArgumentHelp("Id of the artifact an export wrote (ferry artifacts list).", valueName: "id"))
    var artifact: String
    @Option(name: .customLong("to"), help: ArgumentHelp("The new tenant (must not exist).", valueName: "instance/tenant"))
    var to: String
    @Option(name: .customLong("copy-width"), help: "Archive files loaded at once; default: the server's.")
    var copyWidth: UInt32?
    @Option(name: .customLong("index-width"), help: "Index builds at once; default: the server's.")
    var indexWidth: UInt32?
    @OptionGroup var submit: SubmitOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let target = try instanceAndTenant(to, flag: "--to")
        try await start(.with {
            $0.import = .with {
                $0.artifactID = artifact
                $0.targetInstance = target.instance
                $0.targetTenant = target.tenant
                $0.copyWidth = copyWidth ?? 0
                $0.indexWidth = indexWidth ?? 0
            }
        }, connection: connection, options: submit)
    }
}

struct StartReplace: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replace",
        abstract: "Clone every tenant of an instance (or the listed ones) to another instance under the same names.",
        discussion: """
        Examples:
          ferry start replace --from eu-1 --to eu-1-new --watch
          ferry start replace --from eu-1 --to eu-1-new --tenant acme --tenant globex --tenant-width 4
        """)

    @Option(name: .customLong("from"), help: ArgumentHelp("The instance whose tenants are copied.", valueName: "instance"))
    var from: String
    @Option(name: .customLong("to"), help: ArgumentHelp("The instance they are copied to.", valueName: "instance"))
    var to: String
    @Option(name: .customLong("tenant"), help: ArgumentHelp("Only this tenant (repeat for several); default: every tenant.", valueName: "tenant"))
    var tenants: [String] = []
    @Option(name: .customLong("tenant-width"), help: "Tenants copied at once; default: the server's.")
    var tenantWidth: UInt32?
    @Option(name: .customLong("copy-width"), help: "Per tenant: tables copied at once.")
    var copyWidth: UInt32?
    @Option(name: .customLong("index-width"), help: "Per tenant: index builds at once.")
    var indexWidth: UInt32?
    @Option(name: .customLong("split-table-bytes"), help: "Per tenant: split tables larger than this into parallel block ranges.")
    var splitTableBytes: Int64?
    @OptionGroup var submit: SubmitOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        try await start(.with {
            $0.instanceReplace = .with {
                $0.sourceInstance = from
                $0.targetInstance = to
                $0.tenants = tenants
                $0.tenantWidth = tenantWidth ?? 0
                $0.copyWidth = copyWidth ?? 0
                $0.indexWidth = indexWidth ?? 0
                $0.splitTableBytes = splitTableBytes ?? 0
            }
        }, connection: connection, options: submit)
    }
}

// MARK: rerun, cancel, watch

struct Rerun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rerun a FAILED or CANCELLED job: a new attempt that resumes where it stopped.",
        discussion: """
        Examples:
          ferry rerun 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70 --watch
        """)

    @Argument(help: "The job to rerun.") var job: String
    @OptionGroup var submit: SubmitOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        let rerun = try await client.rerunJob(job, queue: submit.queue, requestID: submit.effectiveRequestID, timeout: connection.callTimeout)
        try await submitted(rerun, verb: "rerun as", client: client, options: submit, connection: connection)
    }
}

struct Cancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cancel a job: a queued one at once, a running one within seconds (it can be rerun).",
        discussion: """
        Examples:
          ferry cancel 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70
          ferry cancel 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70 --watch    # wait until it has stopped
        """)

    @Argument(help: "The job to cancel.") var job: String
    @Flag(name: .customLong("watch"), help: "Wait until the job has stopped (exit 3 when it ends CANCELLED).")
    var watch = false
    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        let cancelled = try await client.cancelJob(job, timeout: connection.callTimeout)
        if watch {
            try await follow(cancelled.id, client: client, format: output.format, timeout: connection.callTimeout)
        } else if output.format == .json {
            try printJSON(cancelled)
        } else {
            let note = cancelled.status == .running ? " (stops within seconds; `ferry watch \(cancelled.id)` follows it)" : ""
            print("\(cancelled.kind.label) job \(cancelled.id) \(cancelled.status.name)\(note)")
        }
    }
}

struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow a job to its end: a live display on a terminal, timestamped lines on a pipe, NDJSON with -o json.",
        discussion: """
        The watch survives ferryd restarts: it reconnects (to the next --address when
        there are several) and resumes after the last event it printed, so no status
        change is lost. Exits 0 when the job SUCCEEDED, 2 when it FAILED, 3 when it
        was CANCELLED.

        Examples:
          ferry watch 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70
          ferry watch 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70 -o json | jq -c 'select(.type == "STATUS")'
        """)

    @Argument(help: "The job to follow.") var job: String
    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        try await follow(job, client: client, format: output.format, timeout: connection.callTimeout)
    }
}

// MARK: get, list

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show one job: its parameters, status, progress, error and verified result.",
        discussion: """
        Examples:
          ferry get 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70
          ferry get 4f1c2a9e-0b7d-4c55-9a61-2f8e3d1b6c70 -o json | jq .result
        """)

    @Argument(help: "The job.") var job: String
    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        let client = try await connection.connect()
        defer { client.close() }
        let found = try await client.getJob(job, timeout: connection.callTimeout)
        if output.format == .json {
            try printJSON(found)
        } else {
            print(JobDetail.text(found, wide: output.format == .wide))
        }
    }
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List jobs, newest first.",
        discussion: """
        Examples:
          ferry list
          ferry list --status failed --kind clone --instance eu-1
          ferry list --all -o json | jq -r '.jobs[].id'
        """)

    @Option(name: .customLong("status"), help: "Only jobs with this status: queued, running, succeeded, failed, cancelled.")
    var status: String?
    @Option(name: .customLong("kind"), help: "Only jobs of this kind: clone, export, import, replace.")
    var kind: String?
    @Option(name: .customLong("instance"), help: "Only jobs that read or write this instance.")
    var instance: String?
    @OptionGroup var paging: PagingOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        var request = ListJobsRequest()
        request.status = try status.map(JobStatus.parse) ?? .unspecified
        request.kind = try kind.map(JobKind.parse) ?? .unspecified
        request.instance = instance ?? ""
        request.pageSize = paging.limit
        let client = try await connection.connect()
        defer { client.close() }
        let (pages, next) = try await paging.pages { token in
            request.pageToken = token
            let page = try await client.listJobs(request, timeout: connection.callTimeout)
            return (page, page.nextPageToken)
        }
        let response = ListJobsResponse.with {
            $0.jobs = pages.flatMap(\.jobs)
            $0.nextPageToken = next
        }
        if output.format == .json {
            try printJSON(response)
            return
        }
        let wide = output.format == .wide
        var table = TextTable(wide ? ["JOB", "KIND", "STATUS", "ROUTE", "PROGRESS", "AGE", "ATTEMPT", "BY", "DURATION", "ERROR"]
                                   : ["JOB", "KIND", "STATUS", "ROUTE", "PROGRESS", "AGE"])
        for job in response.jobs {
            var row = [job.id, job.kind.label, job.status.name, JobText.route(job), JobText.progress(job.progress, kind: job.kind), job.createdAt.age]
            if wide {
                row += ["\(job.attempt)", job.createdBy, JobText.duration(job).map(shortDuration) ?? "-",
                        job.hasError ? "\(job.error.code): \(job.error.message)" : ""]
            }
            table.add(row)
        }
        if response.jobs.isEmpty {
            print("no jobs")
        } else {
            table.print()
        }
        paging.mentionMore(next, command: "ferry list")
    }
}

/// `ferry get`'s human output.
enum JobDetail {
    static func text(_ job: Job, wide: Bool) -> String {
        var lines: [(String, String)] = [
            ("Job", job.id),
            ("Kind", job.kind.label),
            ("Status", job.status.name),
            ("Route", JobText.route(job)),
            ("Attempt", job.attempt == 1 ? "1" : "\(job.attempt) (rerun of \(job.rerunOf), lineage \(job.rootJobID))"),
            ("Created", "\(job.createdAt.rfc3339) by \(job.createdBy) (\(job.createdAt.age) ago)"),
        ]
        if job.hasStartedAt { lines.append(("Started", job.startedAt.rfc3339)) }
        if job.hasFinishedAt { lines.append(("Finished", job.finishedAt.rfc3339 + (JobText.duration(job).map { " (took \(shortDuration($0)))" } ?? ""))) }
        lines.append(("Progress", JobText.progress(job.progress, kind: job.kind)))
        if !job.progress.inFlight.isEmpty { lines.append(("In flight", job.progress.inFlight.joined(separator: ", "))) }
        if job.hasError {
            lines.append(("Error", "\(job.error.code): \(job.error.message)\(job.error.retryable ? " (retryable)" : "")"))
        }
        if job.status == .succeeded { lines.append(("Result", JobText.verified(job))) }
        if wide, case .some(let params) = job.params.params { lines.append(("Params", "\(params)")) }
        var text = keyValues(lines)
        if !job.result.tables.isEmpty {
            var table = TextTable(["TENANT", "TABLE", "ROWS", "CHECKSUM"])
            for result in job.result.tables { table.add([result.tenant, result.table, grouped(result.rows), result.checksum]) }
            text += "\n\n" + table.rendered
        }
        if !job.result.tenants.isEmpty {
            var table = TextTable(["TENANT", "STATUS", "JOB", "ERROR"])
            for outcome in job.result.tenants {
                let status = outcome.status == .tenantSucceeded ? "succeeded" : outcome.status == .tenantFailed ? "failed" : "not finished"
                table.add([outcome.tenant, status, outcome.jobID, outcome.hasError ? "\(outcome.error.code): \(outcome.error.message)" : ""])
            }
            text += "\n\n" + table.rendered
        }
        return text
    }
}
