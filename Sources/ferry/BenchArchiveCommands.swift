import ArgumentParser
import FerryClient
import FerryCore
import FerryProtocol
import Foundation

/// `ferry bench export`: one real export job (tenant → archive artifact), timed as `bench clone`
/// times a clone (``BenchJobTiming``), then the artifact it wrote as GetArtifact reads it: id,
/// size, tables and rows, also in the result file (`artifactId`, `artifactSizeBytes`, …). The
/// job computes every table's row count and checksum in its snapshot into the archive's
/// manifest. Exits 1 unless the job SUCCEEDED and its artifact could be read.
/// `scripts/bench-archive` runs it beside `pg_dump -Fd`.
struct BenchExport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Run one export job and time it: wall time, phases, rows and bytes written, ferryd's CPU, the artifact's id and size; exit 1 unless it SUCCEEDED.")

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("source-instance"), help: "Id of the registered instance holding the tenant.")
    var sourceInstance: String

    @Option(name: .customLong("source-tenant"), help: "Tenant (schema) to export.")
    var sourceTenant: String

    @Option(name: .customLong("source-dsn"), help: ArgumentHelp(
        "Register --source-instance with this DSN first (PutInstance, needs an admin token).", valueName: "dsn"))
    var sourceDSN: String?

    @Option(name: .customLong("ttl-seconds"), help: "Seconds the archive is kept; 0: the server's default.")
    var ttlSeconds: Int64 = 0

    @Option(name: .customLong("copy-width"), help: "Tables or block ranges written at once; 0: the server's default.")
    var copyWidth: UInt32 = 0

    @Option(name: .customLong("split-table-bytes"), help: "Write tables larger than this as several files of block ranges; 0: the server's default.")
    var splitTableBytes: Int64 = 0

    @OptionGroup var job: BenchJobOptions

    func validate() throws {
        guard splitTableBytes >= 0, ttlSeconds >= 0 else { throw ValidationError("--split-table-bytes and --ttl-seconds must be ≥ 0") }
    }

    func run() async throws {
        let client = try await connection.connectDirect()
        defer { client.close() }
        try await putInstances(client, [(sourceInstance, sourceDSN)])

        var request = StartJobRequest()
        request.export = .with {
            $0.sourceInstance = sourceInstance
            $0.sourceTenant = sourceTenant
            $0.ttlSeconds = ttlSeconds
            $0.copyWidth = copyWidth
            $0.splitTableBytes = splitTableBytes
        }

        try await BenchJobTiming(kind: "export", options: job).run(
            client, request,
            describe: "\(sourceInstance)/\(sourceTenant) → an archive, copy width \(benchWidth(copyWidth)), "
                + "split tables over \(splitTableBytes == 0 ? "the server's default" : "\(splitTableBytes) bytes")",
            tables: { "checksummed: \($0) table(s), \($1) rows, row counts and checksums in the archive's manifest" },
            finish: { job in
                guard job.status == .succeeded else { return BenchJobExtras() }
                let id = job.result.artifactID
                guard !id.isEmpty else {
                    return BenchJobExtras(lines: ["FAILED: the export SUCCEEDED without an artifact id in its result"], failed: true)
                }
                var extras = BenchJobExtras(fields: ["artifactId": id])
                do {
                    let artifact = try await client.unary(FerryMethods.getArtifact, .with { $0.artifactID = id })
                    extras.lines.append(String(format: "artifact %@: %lld bytes (%.1f MB), %lld table(s), %lld rows, format %d, sha256 %@",
                                               id, artifact.sizeBytes, Double(artifact.sizeBytes) / 1e6, artifact.tables,
                                               artifact.rows, artifact.formatVersion, String(artifact.sha256.prefix(16)) + "…"))
                    extras.fields["artifactSizeBytes"] = artifact.sizeBytes
                    extras.fields["artifactTables"] = artifact.tables
                    extras.fields["artifactRows"] = artifact.rows
                    extras.fields["artifactSha256"] = artifact.sha256
                } catch {
                    extras.lines.append("FAILED: GetArtifact of \(id): \(error)")
                    extras.failed = true
                }
                return extras
            })
    }
}

/// `ferry bench import`: one real import job (`--artifact-id` → a new tenant), timed as
/// `bench clone` times a clone (``BenchJobTiming``). The job checks the archive before it
/// writes and verifies every table's rows and checksum against the manifest. Exits 1 unless
/// it SUCCEEDED. `scripts/bench-archive` runs it beside `pg_restore`.
struct BenchImport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Run one import job and time it: wall time, phases, rows and bytes loaded, ferryd's CPU; exit 1 unless it SUCCEEDED.")

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("artifact-id"), help: "Id of the artifact (an export's archive) to import.")
    var artifactID: String

    @Option(name: .customLong("target-instance"), help: "Id of the registered instance to create the tenant in.")
    var targetInstance: String

    @Option(name: .customLong("target-tenant"), help: "Name of the new tenant (must not exist).")
    var targetTenant: String

    @Option(name: .customLong("target-dsn"), help: ArgumentHelp(
        "Register --target-instance with this DSN first (PutInstance, needs an admin token).", valueName: "dsn"))
    var targetDSN: String?

    @Option(name: .customLong("copy-width"), help: "Archive files loaded at once; 0: the server's default.")
    var copyWidth: UInt32 = 0

    @Option(name: .customLong("index-width"), help: "Index builds at once; 0: the server's default.")
    var indexWidth: UInt32 = 0

    @OptionGroup var job: BenchJobOptions

    func run() async throws {
        let client = try await connection.connectDirect()
        defer { client.close() }
        try await putInstances(client, [(targetInstance, targetDSN)])

        var request = StartJobRequest()
        request.import = .with {
            $0.artifactID = artifactID
            $0.targetInstance = targetInstance
            $0.targetTenant = targetTenant
            $0.copyWidth = copyWidth
            $0.indexWidth = indexWidth
        }

        try await BenchJobTiming(kind: "import", options: job).run(
            client, request,
            describe: "artifact \(artifactID) → \(targetInstance)/\(targetTenant), "
                + "copy width \(benchWidth(copyWidth)), index width \(benchWidth(indexWidth))",
            tables: { "verified: \($0) table(s), \($1) rows, row counts and checksums equal to the archive's manifest" },
            finish: { _ in BenchJobExtras(fields: ["artifactId": artifactID]) })
    }
}
