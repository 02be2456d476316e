// The RPC methods of `ferry/1` and the role each needs (DESIGN.md §4).

/// A caller's role, ordered by privilege: `viewer` < `operator` < `admin`.
/// Each role may do everything the roles below it may.
public enum Role: String, Comparable, Sendable, CaseIterable {
    /// Get, List, Watch (and Health, which needs no role at all).
    case viewer
    /// Also Start, Rerun, Cancel.
    case `operator`
    /// Also instance registration.
    case admin

    private var rank: Int {
        switch self {
        case .viewer: 0
        case .operator: 1
        case .admin: 2
        }
    }

    public static func < (lhs: Role, rhs: Role) -> Bool { lhs.rank < rhs.rank }
}

/// One RPC method of `ferry/1`; the raw value is its wire name as sent in a `call` frame's `method`.
public enum FerryMethod: String, CaseIterable, Sendable {
    case startJob = "ferry.v1.Jobs/StartJob"
    case rerunJob = "ferry.v1.Jobs/RerunJob"
    case watchJob = "ferry.v1.Jobs/WatchJob"
    case getJob = "ferry.v1.Jobs/GetJob"
    case listJobs = "ferry.v1.Jobs/ListJobs"
    case cancelJob = "ferry.v1.Jobs/CancelJob"
    case putInstance = "ferry.v1.Instances/PutInstance"
    case listInstances = "ferry.v1.Instances/ListInstances"
    case listTenants = "ferry.v1.Instances/ListTenants"
    case healthCheck = "ferry.v1.Health/Check"

    /// True for methods that answer with a stream of messages (WatchJob); false for unary ones.
    public var isServerStreaming: Bool {
        switch self {
        case .watchJob: true
        case .startJob, .rerunJob, .getJob, .listJobs, .cancelJob,
             .putInstance, .listInstances, .listTenants, .healthCheck: false
        }
    }

    /// The least role a caller needs, or nil when the method needs no authorization (Health/Check).
    public var requiredRole: Role? {
        switch self {
        case .healthCheck: nil
        case .getJob, .listJobs, .watchJob, .listInstances, .listTenants: .viewer
        case .startJob, .rerunJob, .cancelJob: .operator
        case .putInstance: .admin
        }
    }
}
