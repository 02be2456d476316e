import ArgumentParser
import FerryClient
import FerryCore
import FerryProtocol
import Foundation

/// `ferry bench clone`: one real clone job, timed. Starts it, watches it to its end (WatchJob;
/// GetJob every 200 ms if the stream breaks), and prints the wall time from StartJob to the
/// terminal status, when each phase began, the final progress figures and, with
/// `--server-pid`, ferryd's CPU time over the job. Exits 1 unless the job SUCCEEDED.
/// `scripts/bench-clone` runs it beside pg_dump | psql and pgcopydb on the same data. The
/// timing is ``BenchJobTiming``'s, shared with `bench export` and `bench import`.
struct BenchClone: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clone",
        abstract: "Run one clone job and time it: wall time, phases, rows and bytes copied, ferryd's CPU; exit 1 unless it SUCCEEDED.")

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("source-instance"), help: "Id of the registered instance holding the tenant.")
    var sourceInstance: String

    @Option(name: .customLong("source-tenant"), help: "Tenant (schema) to copy.")
    var sourceTenant: String

    @Option(name: .customLong("target-instance"), help: "Id of the registered instance to copy to.")
    var targetInstance: String

    @Option(name: .customLong("target-tenant"), help: "Name of the new tenant (must not exist).")
    var targetTenant: String

    @Option(name: .customLong("source-dsn"), help: ArgumentHelp(
        "Register --source-instance with this DSN first (PutInstance, needs an admin token).", valueName: "dsn"))
    var sourceDSN: String?

    @Option(name: .customLong("target-dsn"), help: ArgumentHelp(
        "Register --target-instance with this DSN first (PutInstance, needs an admin token).", valueName: "dsn"))
    var targetDSN: String?

    @Option(name: .customLong("copy-width"), help: "Tables or block ranges copied at once; 0: the server's default.")
    var copyWidth: UInt32 = 0

    @Option(name: .customLong("index-width"), help: "Index builds at once; 0: the server's default.")
    var indexWidth: UInt32 = 0

    @Option(name: .customLong("split-table-bytes"), help: "Split tables larger than this into block ranges; 0: the server's default.")
    var splitTableBytes: Int64 = 0

    @OptionGroup var job: BenchJobOptions

    func validate() throws {
        guard splitTableBytes >= 0 else { throw ValidationError("--split-table-bytes must be ≥ 0") }
    }

    func run() async throws {
        let client = try await connection.connectDirect()
        defer { client.close() }
        try await putInstances(client, [(sourceInstance, sourceDSN), (targetInstance, targetDSN)])

        var request = StartJobRequest()
        var params = CloneParams.clone(from: sourceInstance, sourceTenant, to: targetInstance, targetTenant)
        params.copyWidth = copyWidth
        params.indexWidth = indexWidth
        params.splitTableBytes = splitTableBytes
        request.clone = params

        try await BenchJobTiming(kind: "clone", options: job).run(client, request, describe:
            "\(sourceInstance)/\(sourceTenant) → \(targetInstance)/\(targetTenant), "
            + "copy width \(benchWidth(copyWidth)), index width \(benchWidth(indexWidth)), split tables over \(splitTableBytes == 0 ? "the server's default" : "\(splitTableBytes) bytes")")
    }
}
