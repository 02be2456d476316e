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

/// Checks a job's parameters and works out what it touches. Errors are INVALID_ARGUMENT
/// naming the field.
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

    /// The instances and tenants `params` touches, sorted; every name checked.
    public static func touches(_ params: JobParams) throws -> [JobTouch] {
        var touches: [JobTouch] = []
        if case .clone(let clone)? = params.params {
            let source = try instance(clone.sourceInstance, "clone.sourceInstance")
            let sourceTenant = try tenant(clone.sourceTenant, "clone.sourceTenant")
            let target = try instance(clone.targetInstance, "clone.targetInstance")
            let targetTenant = try tenant(clone.targetTenant, "clone.targetTenant")
            if source == target && sourceTenant == targetTenant {
                throw RPCError(.invalidArgument, "clone source and target are the same tenant (\(source)/\(sourceTenant))")
            }
            touches = [JobTouch(instance: source, tenant: sourceTenant, writes: false), JobTouch(instance: target, tenant: targetTenant, writes: true)]
        } else if case .export(let export)? = params.params {
            touches = [JobTouch(instance: try instance(export.sourceInstance, "export.sourceInstance"),
                                tenant: try tenant(export.sourceTenant, "export.sourceTenant"), writes: false)]
        } else if case .import(let request)? = params.params {
            _ = try parseJobID(request.artifactID, field: "import.artifactId")
            touches = [JobTouch(instance: try instance(request.targetInstance, "import.targetInstance"),
                                tenant: try tenant(request.targetTenant, "import.targetTenant"), writes: true)]
        } else if case .instanceReplace(let replace)? = params.params {
            let source = try instance(replace.sourceInstance, "instanceReplace.sourceInstance")
            let target = try instance(replace.targetInstance, "instanceReplace.targetInstance")
            if source == target {
                throw RPCError(.invalidArgument, "instanceReplace source and target are the same instance (\(source))")
            }
            touches = [JobTouch(instance: source, tenant: "", writes: false)]
            if replace.tenants.isEmpty {
                touches.append(JobTouch(instance: target, tenant: "", writes: true))
            } else {
                for (index, name) in Set(replace.tenants).sorted().enumerated() {
                    touches.append(JobTouch(instance: target, tenant: try tenant(name, "instanceReplace.tenants[\(index)]"), writes: true))
                }
            }
        } else {
            throw RPCError(.invalidArgument, "exactly one of clone, export, import, instanceReplace must be set")
        }
        return touches.sorted()
    }

    /// The distinct instances of `touches`, in lock order.
    public static func instances(_ touches: [JobTouch]) -> [String] {
        Array(Set(touches.map(\.instance))).sorted()
    }

    static func instance(_ value: String?, _ field: String) throws -> String {
        guard let value, !value.isEmpty else { throw RPCError(.invalidArgument, "\(field) is required") }
        guard isInstanceID(value) else {
            throw RPCError(.invalidArgument, "\(field) \"\(value.prefix(80))\" is not an instance id (lower-case letters, digits, '_' and '-', at most 63)")
        }
        return value
    }

    static func tenant(_ value: String?, _ field: String) throws -> String {
        guard let value, !value.isEmpty else { throw RPCError(.invalidArgument, "\(field) is required") }
        guard isTenantName(value) else {
            throw RPCError(.invalidArgument, "\(field) \"\(value.prefix(80))\" is not a tenant name (^[a-z_][a-z0-9_]{0,62}$, not pg_*, information_schema or public)")
        }
        return value
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
