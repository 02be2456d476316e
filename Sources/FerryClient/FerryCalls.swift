import FerryProtocol

/// Anything that can make a unary `ferry/1` call: a ``FerryConnection`` (one connection) or a
/// ``FerryClient`` (several addresses, reconnecting). The typed methods below are defined once
/// for both.
public protocol FerryCalling: Sendable {
    /// Calls a unary method: one request, one response, or an ``RPCError``.
    ///
    /// - Parameter timeout: the call's deadline, sent to the server (which stops working on
    ///   it then) and enforced locally; nil for none.
    func unary<Request, Response>(
        _ method: UnaryMethod<Request, Response>, _ request: Request,
        timeout: Duration?, metadata: [String: String]
    ) async throws -> Response
}

extension FerryCalling {
    // MARK: Jobs

    /// Starts a job (`Jobs/StartJob`); needs role `operator`. Throws RESOURCE_EXHAUSTED at
    /// the instance's cap unless `request.queue` is set (see the details for what is in the
    /// way), ALREADY_EXISTS for a target tenant of another lineage, NOT_FOUND for an
    /// unregistered instance.
    public func startJob(_ request: StartJobRequest, timeout: Duration? = nil) async throws -> Job {
        try await unary(FerryMethods.startJob, request, timeout: timeout, metadata: [:])
    }

    /// Reruns a FAILED or CANCELLED job (`Jobs/RerunJob`): a new attempt of its lineage that
    /// resumes where it stopped. Needs role `operator`.
    public func rerunJob(_ jobID: String, queue: Bool = false, requestID: String? = nil, timeout: Duration? = nil) async throws -> Job {
        try await unary(FerryMethods.rerunJob, .with {
            $0.jobID = jobID
            $0.queue = queue
            $0.requestID = requestID ?? ""
        }, timeout: timeout, metadata: [:])
    }

    /// One job (`Jobs/GetJob`); NOT_FOUND when no job has this id.
    public func getJob(_ jobID: String, timeout: Duration? = nil) async throws -> Job {
        try await unary(FerryMethods.getJob, .with { $0.jobID = jobID }, timeout: timeout, metadata: [:])
    }

    /// One page of jobs, newest first (`Jobs/ListJobs`).
    public func listJobs(_ request: ListJobsRequest = ListJobsRequest(), timeout: Duration? = nil) async throws -> ListJobsResponse {
        try await unary(FerryMethods.listJobs, request, timeout: timeout, metadata: [:])
    }

    /// Cancels a job (`Jobs/CancelJob`) and returns it as it is after the request: CANCELLED
    /// at once when it was queued, still RUNNING for a few seconds when it was running.
    public func cancelJob(_ jobID: String, timeout: Duration? = nil) async throws -> Job {
        try await unary(FerryMethods.cancelJob, .with { $0.jobID = jobID }, timeout: timeout, metadata: [:])
    }

    // MARK: Instances

    /// Registers an instance or replaces its DSN (`Instances/PutInstance`); needs role `admin`.
    public func putInstance(id: String, dsn: String, timeout: Duration? = nil) async throws -> Instance {
        try await unary(FerryMethods.putInstance, .with {
            $0.id = id
            $0.dsn = dsn
        }, timeout: timeout, metadata: [:]).instance
    }

    /// The registered instances, by id (`Instances/ListInstances`).
    public func listInstances(timeout: Duration? = nil) async throws -> [Instance] {
        try await unary(FerryMethods.listInstances, ListInstancesRequest(), timeout: timeout, metadata: [:]).instances
    }

    /// The tenants of an instance, sorted (`Instances/ListTenants`).
    public func listTenants(instance: String, timeout: Duration? = nil) async throws -> [String] {
        try await unary(FerryMethods.listTenants, .with { $0.instanceID = instance }, timeout: timeout, metadata: [:]).tenants
    }

    // MARK: Artifacts

    /// One page of artifacts, newest first (`Artifacts/ListArtifacts`).
    public func listArtifacts(_ request: ListArtifactsRequest = ListArtifactsRequest(), timeout: Duration? = nil) async throws -> ListArtifactsResponse {
        try await unary(FerryMethods.listArtifacts, request, timeout: timeout, metadata: [:])
    }

    /// One artifact (`Artifacts/GetArtifact`).
    public func getArtifact(_ artifactID: String, timeout: Duration? = nil) async throws -> Artifact {
        try await unary(FerryMethods.getArtifact, .with { $0.artifactID = artifactID }, timeout: timeout, metadata: [:])
    }

    /// Deletes an artifact now (`Artifacts/DeleteArtifact`); needs role `admin`.
    /// FAILED_PRECONDITION while an import reads it.
    public func deleteArtifact(_ artifactID: String, timeout: Duration? = nil) async throws -> Artifact {
        try await unary(FerryMethods.deleteArtifact, .with { $0.artifactID = artifactID }, timeout: timeout, metadata: [:])
    }

    // MARK: Health

    /// `Health/Check` (no token needed).
    public func check(timeout: Duration? = nil) async throws -> HealthCheckResponse {
        try await unary(FerryMethods.healthCheck, HealthCheckRequest(), timeout: timeout, metadata: [:])
    }
}

extension StartJobRequest {
    /// A clone of `sourceTenant` on `sourceInstance` to `targetTenant` on `targetInstance`.
    public static func clone(from sourceInstance: String, _ sourceTenant: String, to targetInstance: String, _ targetTenant: String,
                             queue: Bool = false, requestID: String? = nil) -> StartJobRequest {
        .with {
            $0.clone = .clone(from: sourceInstance, sourceTenant, to: targetInstance, targetTenant)
            $0.queue = queue
            $0.requestID = requestID ?? ""
        }
    }
}
