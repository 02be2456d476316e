// Swift mirrors of the messages in proto/ferry/v1/jobs.proto, in the proto3 JSON mapping.
// proto/ is the source of truth: field meanings are documented there.
// Tests/FerryProtocolTests/ProtoConformanceTests.swift checks these types against it.

/// What a job does (`ferry.v1.JobKind`).
public enum JobKind: String, Codable, Sendable, CaseIterable {
    case unspecified = "JOB_KIND_UNSPECIFIED"
    case clone = "CLONE"
    case export = "EXPORT"
    case `import` = "IMPORT"
    case instanceReplace = "INSTANCE_REPLACE"
}

/// Where a job is in its life (`ferry.v1.JobStatus`).
public enum JobStatus: String, Codable, Sendable, CaseIterable {
    case unspecified = "JOB_STATUS_UNSPECIFIED"
    case queued = "QUEUED"
    case running = "RUNNING"
    case succeeded = "SUCCEEDED"
    case failed = "FAILED"
    case cancelled = "CANCELLED"
}

/// What a `JobEvent` reports (`ferry.v1.JobEventType`).
public enum JobEventType: String, Codable, Sendable, CaseIterable {
    case unspecified = "JOB_EVENT_TYPE_UNSPECIFIED"
    case snapshot = "SNAPSHOT"
    case progress = "PROGRESS"
    case status = "STATUS"
}

/// Parameters of a clone job (`ferry.v1.CloneParams`).
public struct CloneParams: Codable, Sendable, Hashable {
    public var sourceInstance: String?
    public var sourceTenant: String?
    public var targetInstance: String?
    public var targetTenant: String?

    public init(sourceInstance: String? = nil, sourceTenant: String? = nil, targetInstance: String? = nil, targetTenant: String? = nil) {
        self.sourceInstance = sourceInstance
        self.sourceTenant = sourceTenant
        self.targetInstance = targetInstance
        self.targetTenant = targetTenant
    }
}

/// Parameters of an export job (`ferry.v1.ExportParams`).
public struct ExportParams: Codable, Sendable, Hashable {
    public var sourceInstance: String?
    public var sourceTenant: String?

    public init(sourceInstance: String? = nil, sourceTenant: String? = nil) {
        self.sourceInstance = sourceInstance
        self.sourceTenant = sourceTenant
    }
}

/// Parameters of an import job (`ferry.v1.ImportParams`).
public struct ImportParams: Codable, Sendable, Hashable {
    public var artifactId: String?
    public var targetInstance: String?
    public var targetTenant: String?

    public init(artifactId: String? = nil, targetInstance: String? = nil, targetTenant: String? = nil) {
        self.artifactId = artifactId
        self.targetInstance = targetInstance
        self.targetTenant = targetTenant
    }
}

/// Parameters of an instance_replace job (`ferry.v1.InstanceReplaceParams`); empty `tenants` means all.
public struct InstanceReplaceParams: Codable, Sendable, Hashable {
    public var sourceInstance: String?
    public var targetInstance: String?
    public var tenants: [String]

    public init(sourceInstance: String? = nil, targetInstance: String? = nil, tenants: [String] = []) {
        self.sourceInstance = sourceInstance
        self.targetInstance = targetInstance
        self.tenants = tenants
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        sourceInstance = try container.decodeIfPresent(String.self, forKey: .sourceInstance)
        targetInstance = try container.decodeIfPresent(String.self, forKey: .targetInstance)
        tenants = try container.decodeIfPresent([String].self, forKey: .tenants) ?? []
    }
}

/// A job's parameters (`ferry.v1.JobParams`): a oneof, so exactly one member should be set.
public struct JobParams: Codable, Sendable, Hashable {
    public var clone: CloneParams?
    public var export: ExportParams?
    public var `import`: ImportParams?
    public var instanceReplace: InstanceReplaceParams?

    public init(clone: CloneParams? = nil, export: ExportParams? = nil, import: ImportParams? = nil, instanceReplace: InstanceReplaceParams? = nil) {
        self.clone = clone
        self.export = export
        self.import = `import`
        self.instanceReplace = instanceReplace
    }
}

/// Request of `ferry.v1.Jobs/StartJob`; exactly one of the `params` oneof members should be set.
public struct StartJobRequest: Codable, Sendable, Hashable {
    public var clone: CloneParams?
    public var export: ExportParams?
    public var `import`: ImportParams?
    public var instanceReplace: InstanceReplaceParams?
    public var queue: Bool?
    public var requestId: String?

    public init(
        clone: CloneParams? = nil, export: ExportParams? = nil, import: ImportParams? = nil,
        instanceReplace: InstanceReplaceParams? = nil, queue: Bool? = nil, requestId: String? = nil
    ) {
        self.clone = clone
        self.export = export
        self.import = `import`
        self.instanceReplace = instanceReplace
        self.queue = queue
        self.requestId = requestId
    }
}

/// Request of `ferry.v1.Jobs/RerunJob`.
public struct RerunJobRequest: Codable, Sendable, Hashable {
    public var jobId: String?
    public var queue: Bool?
    public var requestId: String?

    public init(jobId: String? = nil, queue: Bool? = nil, requestId: String? = nil) {
        self.jobId = jobId
        self.queue = queue
        self.requestId = requestId
    }
}

/// Request of `ferry.v1.Jobs/GetJob`.
public struct GetJobRequest: Codable, Sendable, Hashable {
    public var jobId: String?

    public init(jobId: String? = nil) {
        self.jobId = jobId
    }
}

/// Request of `ferry.v1.Jobs/CancelJob`.
public struct CancelJobRequest: Codable, Sendable, Hashable {
    public var jobId: String?

    public init(jobId: String? = nil) {
        self.jobId = jobId
    }
}

/// Request of `ferry.v1.Jobs/WatchJob`.
public struct WatchJobRequest: Codable, Sendable, Hashable {
    public var jobId: String?
    public var afterSeq: ProtoInt64?

    public init(jobId: String? = nil, afterSeq: ProtoInt64? = nil) {
        self.jobId = jobId
        self.afterSeq = afterSeq
    }
}

/// Request of `ferry.v1.Jobs/ListJobs`; unset filters match every job.
public struct ListJobsRequest: Codable, Sendable, Hashable {
    public var status: JobStatus?
    public var kind: JobKind?
    public var instance: String?
    public var pageSize: Int32?
    public var pageToken: String?

    public init(status: JobStatus? = nil, kind: JobKind? = nil, instance: String? = nil, pageSize: Int32? = nil, pageToken: String? = nil) {
        self.status = status
        self.kind = kind
        self.instance = instance
        self.pageSize = pageSize
        self.pageToken = pageToken
    }
}

/// Response of `ferry.v1.Jobs/ListJobs`.
public struct ListJobsResponse: Codable, Sendable, Hashable {
    public var jobs: [Job]
    public var nextPageToken: String?

    public init(jobs: [Job] = [], nextPageToken: String? = nil) {
        self.jobs = jobs
        self.nextPageToken = nextPageToken
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        jobs = try container.decodeIfPresent([Job].self, forKey: .jobs) ?? []
        nextPageToken = try container.decodeIfPresent(String.self, forKey: .nextPageToken)
    }
}

/// A job: one clone, export, import or instance_replace run and its outcome (`ferry.v1.Job`).
public struct Job: Codable, Sendable, Hashable {
    public var id: String?
    public var kind: JobKind?
    public var status: JobStatus?
    public var params: JobParams?
    public var attempt: Int32?
    public var rerunOf: String?
    public var rootJobId: String?
    public var progress: JobProgress?
    public var error: JobError?
    public var createdAt: ProtoTimestamp?
    public var startedAt: ProtoTimestamp?
    public var finishedAt: ProtoTimestamp?
    public var createdBy: String?

    public init(
        id: String? = nil, kind: JobKind? = nil, status: JobStatus? = nil, params: JobParams? = nil,
        attempt: Int32? = nil, rerunOf: String? = nil, rootJobId: String? = nil,
        progress: JobProgress? = nil, error: JobError? = nil,
        createdAt: ProtoTimestamp? = nil, startedAt: ProtoTimestamp? = nil, finishedAt: ProtoTimestamp? = nil,
        createdBy: String? = nil
    ) {
        self.id = id
        self.kind = kind
        self.status = status
        self.params = params
        self.attempt = attempt
        self.rerunOf = rerunOf
        self.rootJobId = rootJobId
        self.progress = progress
        self.error = error
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.createdBy = createdBy
    }
}

/// Progress figures of a job (`ferry.v1.JobProgress`).
public struct JobProgress: Codable, Sendable, Hashable {
    public var phase: String?
    public var tablesTotal: ProtoInt64?
    public var tablesDone: ProtoInt64?
    public var rowsCopied: ProtoInt64?
    public var bytesCopied: ProtoInt64?
    public var tenantsTotal: ProtoInt64?
    public var tenantsDone: ProtoInt64?
    public var current: String?

    public init(
        phase: String? = nil, tablesTotal: ProtoInt64? = nil, tablesDone: ProtoInt64? = nil,
        rowsCopied: ProtoInt64? = nil, bytesCopied: ProtoInt64? = nil,
        tenantsTotal: ProtoInt64? = nil, tenantsDone: ProtoInt64? = nil, current: String? = nil
    ) {
        self.phase = phase
        self.tablesTotal = tablesTotal
        self.tablesDone = tablesDone
        self.rowsCopied = rowsCopied
        self.bytesCopied = bytesCopied
        self.tenantsTotal = tenantsTotal
        self.tenantsDone = tenantsDone
        self.current = current
    }
}

/// Why a job failed (`ferry.v1.JobError`); `code` is a gRPC canonical status name.
public struct JobError: Codable, Sendable, Hashable {
    public var code: String?
    public var message: String?
    public var retryable: Bool?

    public init(code: String? = nil, message: String? = nil, retryable: Bool? = nil) {
        self.code = code
        self.message = message
        self.retryable = retryable
    }
}

/// One event of a job, as streamed by `ferry.v1.Jobs/WatchJob` (`ferry.v1.JobEvent`).
public struct JobEvent: Codable, Sendable, Hashable {
    public var seq: ProtoInt64?
    public var type: JobEventType?
    public var job: Job?
    public var progress: JobProgress?
    public var status: JobStatus?
    public var error: JobError?
    public var at: ProtoTimestamp?
    public var jobId: String?

    public init(
        seq: ProtoInt64? = nil, type: JobEventType? = nil, job: Job? = nil, progress: JobProgress? = nil,
        status: JobStatus? = nil, error: JobError? = nil, at: ProtoTimestamp? = nil, jobId: String? = nil
    ) {
        self.seq = seq
        self.type = type
        self.job = job
        self.progress = progress
        self.status = status
        self.error = error
        self.at = at
        self.jobId = jobId
    }
}
