import FerryProtocol
import Foundation

/// One instance (and tenant) a job touches. Admission counts RUNNING jobs per instance and
/// refuses two RUNNING jobs that write the same (instance, tenant); an empty tenant stands
/// for every tenant of the instance (instance_replace without a filter).
public struct JobTouch: Sendable, Hashable, Comparable {
    public var instance: String
    public var tenant: String
    public var writes: Bool

    public init(instance: String, tenant: String, writes: Bool) {
        self.instance = instance
        self.tenant = tenant
        self.writes = writes
    }

    public static func < (a: JobTouch, b: JobTouch) -> Bool {
        (a.instance, a.tenant, a.writes ? 1 : 0) < (b.instance, b.tenant, b.writes ? 1 : 0)
    }

    /// Whether two writes collide: same instance, and the same tenant or a whole-instance write.
    public func collides(with other: JobTouch) -> Bool {
        writes && other.writes && instance == other.instance && (tenant == other.tenant || tenant.isEmpty || other.tenant.isEmpty)
    }
}

/// The kind-independent part of a request's parameters: which kind it is, and the shape of
/// instance ids and tenant names. Each kind checks its own fields and works out what it
/// touches in its plan step.
public enum JobPlan {
    /// The parameters of a StartJob request: exactly one kind's member must be set.
    public static func params(of request: StartJobRequest) throws -> JobParams {
        var params = JobParams()
        switch request.params {
        case .clone(let clone)?: params.params = .clone(clone)
        case .export(let export)?: params.params = .export(export)
        case .import(let request)?: params.params = .import(request)
        case .instanceReplace(let replace)?: params.params = .instanceReplace(replace)
        case nil: break
        }
        guard params.kind != nil else {
            throw RPCError(.invalidArgument, "exactly one of clone, export, import, instanceReplace must be set")
        }
        return params
    }

    /// The distinct instances of `touches`, in lock order.
    public static func instances(_ touches: [JobTouch]) -> [String] {
        Array(Set(touches.map(\.instance))).sorted()
    }

    /// `^[a-z0-9][a-z0-9_-]{0,62}$`, as the instances table checks.
    public static func isInstanceID(_ value: String) -> Bool {
        guard let first = value.utf8.first, value.utf8.count <= 63 else { return false }
        let lowerOrDigit = { (c: UInt8) in (c >= 97 && c <= 122) || (c >= 48 && c <= 57) }
        return lowerOrDigit(first) && value.utf8.allSatisfy { lowerOrDigit($0) || $0 == 95 || $0 == 45 }
    }

    /// A tenant is a schema named `^[a-z_][a-z0-9_]{0,62}$`, other than the system ones.
    public static func isTenantName(_ value: String) -> Bool {
        guard let first = value.utf8.first, value.utf8.count <= 63 else { return false }
        let lower = { (c: UInt8) in c >= 97 && c <= 122 }
        guard lower(first) || first == 95 else { return false }
        guard value.utf8.allSatisfy({ lower($0) || ($0 >= 48 && $0 <= 57) || $0 == 95 }) else { return false }
        return !value.hasPrefix("pg_") && value != "information_schema" && value != "public"
    }
}
