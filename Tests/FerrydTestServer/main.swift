import DataMover
import Executors
import FerryProtocol
import FerrydCLI
import Foundation
import JobStore
import PostgresNIO

/// A stand-in for a data mover on the job-kind interface, so the engine can be tested with
/// real replicas before the real kinds exist. It uses all of the interface: typed params,
/// a plan step, the instance sessions and their fence, per-item checkpoints and progress
/// counters.
///
/// It works in `FERRY_TEST_JOB_STEPS` steps (default 5) of `FERRY_TEST_JOB_MS / steps`
/// milliseconds each (default 300 ms in all). Each step is an item: shown in flight while it
/// runs, then checkpointed as a VERIFIED row of `job_tables` (`step-0001`, …), so a rerun
/// skips the steps its lineage finished. Progress: `tablesTotal` = steps, `tablesDone` =
/// steps finished in the lineage, `rowsCopied` = steps this attempt ran.
///
/// Names steer it:
/// - a target tenant starting with `write_` really writes: the plan requires the source
///   tenant to exist (NOT_FOUND) and the target to be free or this lineage's
///   (ALREADY_EXISTS); the run claims the target tenant, creates it, and through a fenced
///   writer session inserts one row per step into `<target>.steps` (attempt, step, pid,
///   `clock_timestamp()`);
/// - a source or target tenant starting with `fail_` fails after the first step
///   (FAILED_PRECONDITION, not retryable);
/// - a target tenant named `<word>_<ms>_<steps>` sets this job's length;
/// - a target tenant starting with `stuck_` stands for code that cannot stop in time: once
///   stopped, it ignores the stop for a minute before it returns.
///
/// With `FERRY_TEST_RECORD_RUNS=1` each run also records when it really ran, by the target
/// instance's clock, in the instance's `public.ferry_test_runs` (which the test creates):
/// a witness of concurrency kept apart from the control database's own bookkeeping.
struct SteppingJob: JobRunner {
    struct Params: Sendable {
        var source: (instance: String, tenant: String)
        var target: (instance: String, tenant: String)?
        var steps: Int
        var stepDuration: Duration
        var failing: Bool
        var writes: Bool
        var stuck = false
    }

    let steps: Int
    let totalMs: Int
    let recordRuns: Bool

    func params(from wire: JobParams) throws(PlanRefusal) -> Params {
        var params: Params
        switch wire.params {
        case .clone(let clone)?:
            let source = (try ParamCheck.instance(clone.sourceInstance, "clone.sourceInstance"), try ParamCheck.tenant(clone.sourceTenant, "clone.sourceTenant"))
            let target = (try ParamCheck.instance(clone.targetInstance, "clone.targetInstance"), try ParamCheck.tenant(clone.targetTenant, "clone.targetTenant"))
            if source == target {
                throw .invalidArgument(field: "clone", message: "source and target are the same tenant (\(source.0)/\(source.1))")
            }
            params = Params(source: source, target: target, steps: steps, stepDuration: .milliseconds(totalMs / steps), failing: false, writes: false)
        case .export(let export)?:
            let source = (try ParamCheck.instance(export.sourceInstance, "export.sourceInstance"), try ParamCheck.tenant(export.sourceTenant, "export.sourceTenant"))
            params = Params(source: source, target: nil, steps: steps, stepDuration: .milliseconds(totalMs / steps), failing: false, writes: false)
        default:
            throw .invalidArgument(field: "params", message: "the test kind runs clone and export only")
        }
        let targetTenant = params.target?.tenant ?? ""
        params.failing = targetTenant.hasPrefix("fail_") || params.source.tenant.hasPrefix("fail_")
        params.writes = targetTenant.hasPrefix("write_")
        params.stuck = targetTenant.hasPrefix("stuck_")
        let parts = targetTenant.split(separator: "_")
        if parts.count == 3, let ms = Int(parts[1]), let count = Int(parts[2]), count > 0 {
            params.steps = count
            params.stepDuration = .milliseconds(ms / count)
        }
        return params
    }

    func plan(_ params: Params, _ context: PlanContext) async throws -> [JobTouch] {
        var touches = [JobTouch(instance: params.source.instance, tenant: params.source.tenant, writes: false)]
        if let target = params.target {
            touches.append(JobTouch(instance: target.instance, tenant: target.tenant, writes: true))
            if params.writes {
                try await context.requireTenant(instance: params.source.instance, tenant: params.source.tenant)
                try await context.requireTargetTenantAvailable(instance: target.instance, tenant: target.tenant)
            }
        }
        return touches
    }

    func run(_ params: Params, _ context: JobContext) async throws {
        guard recordRuns, let target = params.target else { return try await steps(params, context) }
        let session = try await context.instances.open(target.instance, readOnly: false)
        try await session.execute("""
            INSERT INTO public.ferry_test_runs (job, attempt, started_at) VALUES (\(context.jobID), \(context.attempt), clock_timestamp())
            """, logger: context.logger)
        try await steps(params, context)
        try await session.execute("""
            UPDATE public.ferry_test_runs SET finished_at = clock_timestamp() WHERE job = \(context.jobID)
            """, logger: context.logger)
        await context.instances.close(session)
    }

    func steps(_ params: Params, _ context: JobContext) async throws {
        do {
            try await stepsOnce(params, context)
        } catch is CancellationError where params.stuck {
            // Not cancellable: the executor's grace runs out while this still waits.
            await Task.detached { try? await Task.sleep(for: .seconds(60)) }.value
            throw CancellationError()
        }
    }

    func stepsOnce(_ params: Params, _ context: JobContext) async throws {
        let item = { (step: Int) in String(format: "step-%04d", step) }
        let tenant = params.target?.tenant ?? params.source.tenant
        let finished = Set(try await context.checkpoints.tables().filter { $0.tenant == tenant && $0.status == .verified }.map(\.table))
        let progress = context.progress
        progress.setPhase("data")
        progress.setTotals(tables: Int64(params.steps))
        progress.addDone(tables: Int64(finished.count))

        var writer: PostgresConnection?
        if params.writes, let target = params.target {
            let claim = try await context.checkpoints.claimTenant(instance: target.instance, tenant: target.tenant)
            let connection = try await context.instances.openWriter(target.instance, tenant: target.tenant)
            // A new claim creates the tenant, and refuses one that appeared since the plan.
            let exists = !(try await connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = \(target.tenant)", logger: context.logger)).isEmpty
            if claim == .new && exists {
                throw JobFailure(.alreadyExists, "tenant \(target.tenant) appeared on instance \(target.instance) after the plan and is not Ferry's", retryable: false)
            }
            try await connection.execute("CREATE SCHEMA IF NOT EXISTS \(unescaped: target.tenant)", logger: context.logger)
            try await connection.execute("""
                CREATE TABLE IF NOT EXISTS \(unescaped: target.tenant).steps (
                    attempt int NOT NULL, step int NOT NULL, pid int NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp())
                """, logger: context.logger)
            writer = connection
        }

        for step in 1...params.steps where !finished.contains(item(step)) {
            progress.started(item(step))
            if let writer {
                // The step's time is spent in a statement on the target, so stopping the job
                // must reach the server to end it.
                let seconds = Double(params.stepDuration.components.attoseconds) / 1e18 + Double(params.stepDuration.components.seconds)
                try await writer.execute("SELECT pg_sleep(\(seconds))", logger: context.logger)
                try await writer.execute("""
                    INSERT INTO \(unescaped: tenant).steps (attempt, step, pid) VALUES (\(context.attempt), \(step), pg_backend_pid())
                    """, logger: context.logger)
            } else {
                try await Task.sleep(for: params.stepDuration)
            }
            try await context.checkpoints.save(TableCheckpoint(tenant: tenant, table: item(step), status: .verified, rowCount: 1))
            progress.add(rows: 1)
            progress.finished(item(step))
            if params.failing { throw JobFailure(.failedPrecondition, "the test job was asked to fail", retryable: false) }
        }
        progress.setPhase("done")
    }
}

let environment = ProcessInfo.processInfo.environment
let steps = max(1, Int(environment["FERRY_TEST_JOB_STEPS"] ?? "") ?? 5)
let totalMs = max(0, Int(environment["FERRY_TEST_JOB_MS"] ?? "") ?? 300)
// FERRY_TEST_KINDS (default "clone,export") chooses the kinds this replica runs.
let names = Set((environment["FERRY_TEST_KINDS"] ?? "clone,export").split(separator: ",").map(String.init))
let recordRuns = environment["FERRY_TEST_RECORD_RUNS"] == "1"
var kinds = JobKinds()
if names.contains("clone") { kinds.register(.clone) { _ in SteppingJob(steps: steps, totalMs: totalMs, recordRuns: recordRuns) } }
// "realclone": the real clone kind, with the test hooks FERRY_TEST_CLONE_BEFORE_VERIFY
// ("table:SQL", SQL with {schema} for the target schema, run before that table's checksum;
// "table@1:SQL" only in attempt 1; "tenant.table:SQL" only in that target tenant) and
// FERRY_TEST_CLONE_TEXT=1 (text format throughout). The same hooks serve every real kind.
let cloneHooks: CloneHooks = {
    let hook = environment["FERRY_TEST_CLONE_BEFORE_VERIFY"].flatMap { spec -> (tenant: String?, table: String, attempt: Int32?, sql: String)? in
        guard let colon = spec.firstIndex(of: ":") else { return nil }
        let target = spec[..<colon].split(separator: "@")
        let names = target[0].split(separator: ".", maxSplits: 1).map(String.init)
        return (names.count > 1 ? names[0] : nil, names.last ?? "", target.count > 1 ? Int32(target[1]) : nil, String(spec[spec.index(after: colon)...]))
    }
    var beforeVerify: (@Sendable (String, String, Int32) -> String?)?
    if let hook {
        beforeVerify = { schema, table, attempt in
            guard table == hook.table, hook.tenant == nil || hook.tenant == schema, hook.attempt == nil || hook.attempt == attempt else { return nil }
            return hook.sql.replacingOccurrences(of: "{schema}", with: "\"\(schema)\"")
        }
    }
    return CloneHooks(beforeVerify: beforeVerify, textFormat: environment["FERRY_TEST_CLONE_TEXT"] == "1")
}()
if names.contains("realclone") {
    kinds.register(.clone) { resources in CloneKind(settings: resources.settings, hooks: cloneHooks) }
}
// "realreplace": the real instance_replace kind, with the same hooks.
if names.contains("realreplace") {
    kinds.register(.instanceReplace) { resources in InstanceReplaceKind(settings: resources.settings, controlDatabase: resources.controlDatabase, hooks: cloneHooks) }
}
// "realexport" / "realimport": the real archive kinds (import with the same hooks).
if names.contains("realexport") { kinds.register(.export) { resources in ExportKind(settings: resources.settings) } }
if names.contains("realimport") {
    kinds.register(.import) { resources in ImportKind(settings: resources.settings, controlDatabase: resources.controlDatabase, hooks: cloneHooks) }
}
if names.contains("export") { kinds.register(.export) { _ in SteppingJob(steps: steps, totalMs: totalMs, recordRuns: recordRuns) } }
// Retention hooks: FERRY_TEST_RETENTION_CRASH=1 kills the process (SIGKILL) right after an
// artifact's folder is deleted, before its row; FERRY_TEST_RETENTION_HOLD_MS stalls each sweep once it holds the lease.
let retentionCrash = environment["FERRY_TEST_RETENTION_CRASH"] == "1"
let retentionHoldMs = Int(environment["FERRY_TEST_RETENTION_HOLD_MS"] ?? "") ?? 0
await FerrydMain.main(kinds: kinds, adjust: {
    installAdmissionHold(&$0)
    if retentionCrash { $0.retention.hooks.afterFolderRemoved = { _ in kill(getpid(), SIGKILL) } }
    if retentionHoldMs > 0 { $0.retention.hooks.afterLeaseAcquired = { try? await Task.sleep(for: .milliseconds(retentionHoldMs)) } }
})
