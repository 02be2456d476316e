import Executors
import FerryProtocol
import FerrydCLI
import Foundation

/// A stand-in for a data mover, so the job engine can be tested with real replicas before
/// the real kinds exist. It works in `FERRY_TEST_JOB_STEPS` steps (default 5) of
/// `FERRY_TEST_JOB_MS / steps` milliseconds each (default 300 ms in all), reports progress
/// after each, and saves `{"step": n}` as its resume state, so a rerun continues where its
/// lineage stopped. Progress tells what this attempt did: `tablesDone` = steps finished in
/// the lineage, `rowsCopied` = steps this attempt ran, `current` = "resumed at step N".
/// A target or source tenant starting with `fail_` fails after its first step
/// (FAILED_PRECONDITION, not retryable). A target tenant named `<word>_<ms>_<steps>` sets
/// this job's length (the benchmark's long watched job).
struct SteppingJob: JobRunner {
    let steps: Int
    let stepDuration: Duration

    func run(_ context: JobContext) async throws {
        let parts = context.job.params.clone.targetTenant.split(separator: "_")
        if parts.count == 3, let ms = Int(parts[1]), let steps = Int(parts[2]), steps > 0 {
            return try await SteppingJob(steps: steps, stepDuration: .milliseconds(ms / steps)).work(context)
        }
        try await work(context)
    }

    func work(_ context: JobContext) async throws {
        var step = 0
        if case .number(let saved)? = context.resumeState["step"] { step = Int(saved) }
        let start = step
        let tenants = [context.job.params.clone.targetTenant, context.job.params.clone.sourceTenant, context.job.params.export.sourceTenant]
        let failing = tenants.contains { $0.hasPrefix("fail_") }
        context.report(progress(phase: "data", done: step, ran: 0, start: start))
        while step < steps {
            try await Task.sleep(for: stepDuration)
            step += 1
            try await context.saveResumeState(.object(["step": .number(Double(step))]))
            context.report(progress(phase: step == steps ? "done" : "data", done: step, ran: step - start, start: start))
            if failing { throw JobFailure(.failedPrecondition, "the test job was asked to fail", retryable: false) }
        }
    }

    func progress(phase: String, done: Int, ran: Int, start: Int) -> JobProgress {
        var progress = JobProgress()
        progress.phase = phase
        progress.tablesTotal = Int64(steps)
        progress.tablesDone = Int64(done)
        progress.rowsCopied = Int64(ran)
        progress.current = "resumed at step \(start)"
        return progress
    }
}

let environment = ProcessInfo.processInfo.environment
let steps = max(1, Int(environment["FERRY_TEST_JOB_STEPS"] ?? "") ?? 5)
let totalMs = max(0, Int(environment["FERRY_TEST_JOB_MS"] ?? "") ?? 300)
let job = SteppingJob(steps: steps, stepDuration: .milliseconds(totalMs / steps))
var runners = JobRunners()
runners.register(.clone, job)
runners.register(.export, job)
await FerrydMain.main(runners: runners)
