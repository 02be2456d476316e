import FerryProtocol
import Foundation
import Logging

/// A job kind's implementation: what an executor runs for one attempt of a job.
///
/// The executor owns everything around it — claiming, heartbeats, status transitions,
/// events, cancellation and shutdown — so a kind only moves data. It reports progress through
/// the context (coalesced before it reaches the database), saves its resume state as it goes,
/// and stops promptly when its task is cancelled (by CancelJob, a lost claim or shutdown),
/// throwing `CancellationError`. Any other error fails the job; throw ``JobFailure`` to choose
/// the code and whether a rerun may succeed.
public protocol JobRunner: Sendable {
    func run(_ context: JobContext) async throws
}

/// What a runner gets for one attempt.
public struct JobContext: Sendable {
    /// The job as admitted (id, kind, params, attempt, lineage).
    public let job: Job
    /// The lineage's resume state: what earlier attempts saved (empty object for a first
    /// attempt). Each kind defines its content.
    public let resumeState: JSONValue
    public let logger: Logger
    let progressSink: @Sendable (JobProgress) -> Void
    let resumeSink: @Sendable (JSONValue) async throws -> Void

    public init(
        job: Job, resumeState: JSONValue, logger: Logger,
        progress: @escaping @Sendable (JobProgress) -> Void,
        saveResumeState: @escaping @Sendable (JSONValue) async throws -> Void
    ) {
        self.job = job
        self.resumeState = resumeState
        self.logger = logger
        self.progressSink = progress
        self.resumeSink = saveResumeState
    }

    /// Reports progress. Never blocks: the executor writes the latest figures a few times a
    /// second, so a runner may call this as often as it likes.
    public func report(_ progress: JobProgress) {
        progressSink(progress)
    }

    /// Persists the resume state now (a checkpoint). When this returns, a rerun of this job
    /// will receive `state`. Throws `CancellationError` if the job is no longer ours.
    public func saveResumeState(_ state: JSONValue) async throws {
        try await resumeSink(state)
    }
}

/// A job failure with a status code and whether a rerun may succeed unchanged.
public struct JobFailure: Error, Sendable {
    public var code: StatusCode
    public var message: String
    public var retryable: Bool

    public init(_ code: StatusCode, _ message: String, retryable: Bool) {
        self.code = code
        self.message = message
        self.retryable = retryable
    }

    public var jobError: JobError { JobError(code: code.rawValue, message: message, retryable: retryable) }
}

/// The job kinds a server can run. A kind without a runner is refused at StartJob with
/// UNIMPLEMENTED, never admitted.
public struct JobRunners: Sendable {
    var runners: [JobKind: any JobRunner] = [:]

    public init() {}

    public mutating func register(_ kind: JobKind, _ runner: any JobRunner) {
        runners[kind] = runner
    }

    public func runner(for kind: JobKind) -> (any JobRunner)? { runners[kind] }

    public var kinds: [JobKind] { runners.keys.sorted { $0.rawValue < $1.rawValue } }
}
