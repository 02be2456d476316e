import ControlDatabase
import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO

/// A job kind's implementation: its parameters, its plan, and what an executor runs for one
/// attempt.
///
/// - ``params(from:)`` converts the wire parameters into the kind's own type and checks
///   them; it is the one place a kind's parameters are validated (at StartJob, and again
///   when an executor reads the stored job, which cannot disagree).
/// - ``plan(_:_:)`` runs at StartJob and RerunJob *before* admission, so a caller learns at
///   once, with nothing admitted, what the kind can know up front: a missing source
///   (``PlanRefusal/notFound(_:)``), a target that is not this lineage's
///   (``PlanRefusal/alreadyExists(_:)``), anything else it cannot do
///   (``PlanRefusal/failedPrecondition(_:)``, naming each problem). It returns what the job
///   touches, which admission counts.
/// - ``run(_:_:)`` moves the data. The executor owns everything around it (claim,
///   heartbeats, status, events, cancellation); the kind opens sessions through
///   ``JobContext/instances``, checkpoints each item through ``JobContext/checkpoints``,
///   adds to ``JobContext/progress``, and stops promptly when its task is cancelled,
///   throwing `CancellationError` (``JobContext/stopReason`` says why). Any other error
///   fails the job; throw ``JobFailure`` to choose the code and whether a rerun may succeed.
public protocol JobRunner: Sendable {
    associatedtype Params: Sendable

    func params(from wire: JobParams) throws(PlanRefusal) -> Params
    func plan(_ params: Params, _ context: PlanContext) async throws -> [JobTouch]
    func run(_ params: Params, _ context: JobContext) async throws
}

/// Why a job cannot be admitted, found before anything is admitted. The server answers
/// each with its ferry/1 status code (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
/// FAILED_PRECONDITION, UNAVAILABLE, DATA_LOSS).
public enum PlanRefusal: Error, Sendable, Equatable {
    /// A parameter is missing or malformed: the field and what is wrong with it.
    case invalidArgument(field: String, message: String)
    /// The source instance or tenant does not exist.
    case notFound(String)
    /// The target exists and was not created by this lineage.
    case alreadyExists(String)
    /// Things the kind cannot do with this source or target, each named.
    case failedPrecondition([String])
    /// An instance or the control database could not be asked; retry.
    case unavailable(String)
    /// What the job would read is damaged (an archive that does not match its checksum).
    case dataLoss(String)

    /// The ferry/1 status code the refusal is answered with.
    public var code: StatusCode {
        switch self {
        case .invalidArgument: .invalidArgument
        case .notFound: .notFound
        case .alreadyExists: .alreadyExists
        case .failedPrecondition: .failedPrecondition
        case .unavailable: .unavailable
        case .dataLoss: .dataLoss
        }
    }

    public var message: String {
        switch self {
        case .invalidArgument(let field, let message): "\(field) \(message)"
        case .notFound(let message), .alreadyExists(let message), .unavailable(let message), .dataLoss(let message): message
        case .failedPrecondition(let problems): problems.joined(separator: "; ")
        }
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

/// What a kind's factory gets: the server's resources, created before any kind.
public struct JobResources: Sendable {
    /// Connections to registered instances.
    public let instances: InstanceDirectory
    /// The control database's pool.
    public let controlDatabase: PostgresClient
    public let settings: JobSettings
    public let logger: Logger

    public init(instances: InstanceDirectory, controlDatabase: PostgresClient, settings: JobSettings, logger: Logger) {
        self.instances = instances
        self.controlDatabase = controlDatabase
        self.settings = settings
        self.logger = logger
    }
}

/// Server settings every kind may need.
public struct JobSettings: Sendable {
    /// How long a writer waits for its target tenant's fence (held by another session whose
    /// job is still running) before its job fails, retryably.
    public var fenceWait: Duration = .seconds(30)
    /// How long connecting to an instance may take.
    public var connectTimeout: Int = 10
    /// How many tables, or block ranges of split tables, a job copies at once, unless the job
    /// says otherwise.
    public var copyWidth: Int = 4
    /// How many index builds a job runs at once, alongside its copies.
    public var indexWidth: Int = 2
    /// Tables larger than this (bytes of their main fork) are split into block ranges of
    /// about this size that copy in parallel.
    public var splitTableBytes: Int64 = 256 << 20
    /// How many tenants an instance_replace copies at once, unless the job says otherwise.
    public var tenantWidth: Int = 2
    /// The artifact store: the directory export jobs write archives to and import jobs read
    /// them from (`--artifact-dir`). Every replica must see the same directory (a shared
    /// filesystem); nil when none is configured (export and import are then refused).
    public var artifactDirectory: String?
    /// How long an archive is kept unless its export job says otherwise.
    public var artifactTTL: Duration = .seconds(7 * 24 * 3600)
    public init() {}
}

/// The kinds a server can run, as factories: each is built once the server's resources
/// exist. A kind without a registration is refused at StartJob with UNIMPLEMENTED, never
/// admitted, and never claimed by this replica.
public struct JobKinds: Sendable {
    var factories: [JobKind: @Sendable (JobResources) throws -> AnyJobRunner] = [:]

    public init() {}

    public mutating func register<Runner: JobRunner>(_ kind: JobKind, _ make: @escaping @Sendable (JobResources) throws -> Runner) {
        factories[kind] = { resources in AnyJobRunner(try make(resources)) }
    }

    public var kinds: [JobKind] { factories.keys.sorted { $0.rawValue < $1.rawValue } }

    /// Builds every registered kind.
    public func instantiate(_ resources: JobResources) throws -> RegisteredKinds {
        RegisteredKinds(runners: try factories.mapValues { try $0(resources) }, resources: resources)
    }
}

/// The kinds built for one server, ready to plan and run.
public struct RegisteredKinds: Sendable {
    let runners: [JobKind: AnyJobRunner]
    public let resources: JobResources

    public var kinds: [JobKind] { runners.keys.sorted { $0.rawValue < $1.rawValue } }

    public func runner(for kind: JobKind) -> AnyJobRunner? { runners[kind] }
}

/// A job runner with its parameter type erased: it converts the wire parameters itself.
public struct AnyJobRunner: Sendable {
    private let planBody: @Sendable (JobParams, PlanContext) async throws -> [JobTouch]
    private let checkBody: @Sendable (JobParams) throws(PlanRefusal) -> Void
    let runBody: @Sendable (JobParams, JobContext) async throws -> Void

    init<Runner: JobRunner>(_ runner: Runner) {
        checkBody = { wire throws(PlanRefusal) in _ = try runner.params(from: wire) }
        planBody = { wire, context in try await runner.plan(try runner.params(from: wire), context) }
        runBody = { wire, context in
            let params: Runner.Params
            do {
                params = try runner.params(from: wire)
            } catch {
                // Stored params that no longer validate: this build cannot run the job.
                let reason = (error as? PlanRefusal)?.message ?? "\(error)"
                throw JobFailure(.dataLoss, "the job's stored parameters are not valid for this build: \(reason)", retryable: false)
            }
            try await runner.run(params, context)
        }
    }

    /// Validates the parameters without planning.
    public func check(_ wire: JobParams) throws(PlanRefusal) { try checkBody(wire) }

    /// Validates and plans; returns what the job touches, sorted.
    public func plan(_ wire: JobParams, _ context: PlanContext) async throws -> [JobTouch] {
        try await planBody(wire, context).sorted()
    }
}

/// What a kind's plan step may consult.
public struct PlanContext: Sendable {
    public let instances: InstanceDirectory
    public let controlDatabase: PostgresClient
    /// The root job of the lineage a rerun continues; nil for a new job.
    public let lineage: UUID?
    public let logger: Logger

    public init(instances: InstanceDirectory, controlDatabase: PostgresClient, lineage: UUID?, logger: Logger) {
        self.instances = instances
        self.controlDatabase = controlDatabase
        self.lineage = lineage
        self.logger = logger
    }

    /// Refuses a target tenant that exists on `instance` and was not created by this
    /// lineage (ALREADY_EXISTS). A tenant created by this lineage is a rerun's own partial
    /// result, into which it resumes. A claimed tenant that no longer exists is free again
    /// only for its own lineage.
    public func requireTargetTenantAvailable(instance: String, tenant: String) async throws {
        let claim: JobLifecycle.Claim
        do {
            claim = try await controlDatabase.withConnection { try await JobLifecycle.claim(instance: instance, tenant: tenant, on: $0, logger: logger) }
        } catch {
            throw PlanRefusal.unavailable("the control database is unavailable; retry")
        }
        if case .lineage(let root) = claim, root == lineage { return }
        if case .lineage(let root) = claim {
            throw PlanRefusal.alreadyExists("tenant \(tenant) on instance \(instance) was created by job lineage \(root.uuidString.lowercased()); choose another target tenant or drop it")
        }
        if try await instances.tenantExists(instance, tenant, logger: logger) {
            throw PlanRefusal.alreadyExists("tenant \(tenant) already exists on instance \(instance) and was not created by Ferry; choose another target tenant or drop it")
        }
    }

    /// Refuses a source tenant that does not exist (NOT_FOUND), or that is the partial result
    /// of a job lineage that has not finished it (FAILED_PRECONDITION): copying or exporting
    /// it would pass half a tenant on as whole.
    public func requireTenant(instance: String, tenant: String) async throws {
        guard try await instances.tenantExists(instance, tenant, logger: logger) else {
            throw PlanRefusal.notFound("tenant \(tenant) does not exist on instance \(instance)")
        }
        let creator: UUID?
        do {
            creator = try await controlDatabase.withConnection {
                try await JobLifecycle.unfinishedCreator(instance: instance, tenant: tenant, on: $0, logger: logger)
            }
        } catch {
            throw PlanRefusal.unavailable("the control database is unavailable; retry")
        }
        if let creator {
            throw PlanRefusal.failedPrecondition(["""
                tenant \(tenant) on instance \(instance) is the unfinished target of job lineage \(creator.uuidString.lowercased()): \
                rerun that job to finish it (or drop the tenant) before reading it
                """])
        }
    }
}

/// Checks of the parameter fields every kind shares, as plan refusals naming the field.
public enum ParamCheck {
    /// A registered-instance id field: required, `^[a-z0-9][a-z0-9_-]{0,62}$`.
    public static func instance(_ value: String, _ field: String) throws(PlanRefusal) -> String {
        guard !value.isEmpty else { throw .invalidArgument(field: field, message: "is required") }
        guard JobPlan.isInstanceID(value) else {
            throw .invalidArgument(field: field, message: "\"\(value.prefix(80))\" is not an instance id (lower-case letters, digits, '_' and '-', at most 63)")
        }
        return value
    }

    /// A tenant field: required, `^[a-z_][a-z0-9_]{0,62}$`, not `pg_*`, `information_schema` or `public`.
    public static func tenant(_ value: String, _ field: String) throws(PlanRefusal) -> String {
        guard !value.isEmpty else { throw .invalidArgument(field: field, message: "is required") }
        guard JobPlan.isTenantName(value) else {
            throw .invalidArgument(field: field, message: "\"\(value.prefix(80))\" is not a tenant name (^[a-z_][a-z0-9_]{0,62}$, not pg_*, information_schema or public)")
        }
        return value
    }
}
