import ControlDatabase
import Executors
import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO

/// The `clone` job kind: copies a tenant's schema objects and data to a new tenant, on the
/// same or another instance, under the same or a new name, verified table by table.
///
/// - Plan (at StartJob and RerunJob, before admission): the source tenant must exist, the
///   target must be free or this lineage's own, and the source must hold nothing Ferry
///   cannot copy (FAILED_PRECONDITION naming each object).
/// - Run: ``TenantCopy``. Nothing is ever written to the source: every source session is
///   read-only.
public struct CloneKind: JobRunner {
    public struct Params: Sendable {
        public var sourceInstance: String
        public var sourceTenant: String
        public var targetInstance: String
        public var targetTenant: String
        public var widths: CopyWidths
    }

    let settings: JobSettings
    let hooks: CloneHooks

    public init(settings: JobSettings, hooks: CloneHooks = CloneHooks()) {
        self.settings = settings
        self.hooks = hooks
    }

    /// The most tables (or ranges) one job may copy at once, or build indexes for.
    public static let maxWidth = 64

    public func params(from wire: JobParams) throws(PlanRefusal) -> Params {
        guard case .clone(let clone)? = wire.params else {
            throw .invalidArgument(field: "params", message: "must hold clone parameters for a CLONE job")
        }
        let params = Params(
            sourceInstance: try ParamCheck.instance(clone.sourceInstance, "clone.sourceInstance"),
            sourceTenant: try ParamCheck.tenant(clone.sourceTenant, "clone.sourceTenant"),
            targetInstance: try ParamCheck.instance(clone.targetInstance, "clone.targetInstance"),
            targetTenant: try ParamCheck.tenant(clone.targetTenant, "clone.targetTenant"),
            widths: try Self.widths(copy: clone.copyWidth, index: clone.indexWidth, split: clone.splitTableBytes, field: "clone", settings: settings))
        if params.sourceInstance == params.targetInstance && params.sourceTenant == params.targetTenant {
            throw .invalidArgument(field: "clone.targetTenant", message: "names the source tenant itself (\(params.sourceInstance)/\(params.sourceTenant)); choose another tenant or instance")
        }
        return params
    }

    /// The widths of a job: its own where it set them, the server's defaults otherwise.
    public static func widths(copy: UInt32, index: UInt32, split: Int64, field: String, settings: JobSettings) throws(PlanRefusal) -> CopyWidths {
        guard copy <= maxWidth else { throw .invalidArgument(field: "\(field).copyWidth", message: "is \(copy); at most \(maxWidth)") }
        guard index <= maxWidth else { throw .invalidArgument(field: "\(field).indexWidth", message: "is \(index); at most \(maxWidth)") }
        guard split >= 0 else { throw .invalidArgument(field: "\(field).splitTableBytes", message: "is negative") }
        return CopyWidths(copy: copy == 0 ? settings.copyWidth : Int(copy),
                          index: index == 0 ? settings.indexWidth : Int(index),
                          splitTableBytes: split == 0 ? settings.splitTableBytes : split)
    }

    public func plan(_ params: Params, _ context: PlanContext) async throws -> [JobTouch] {
        try await context.requireTenant(instance: params.sourceInstance, tenant: params.sourceTenant)
        try await context.requireTargetTenantAvailable(instance: params.targetInstance, tenant: params.targetTenant)
        try await Self.requireSupported(instance: params.sourceInstance, tenant: params.sourceTenant, context)
        return [
            JobTouch(instance: params.sourceInstance, tenant: params.sourceTenant, writes: false),
            JobTouch(instance: params.targetInstance, tenant: params.targetTenant, writes: true),
        ]
    }

    /// Refuses a tenant holding objects Ferry cannot copy, naming each.
    public static func requireSupported(instance: String, tenant: String, _ context: PlanContext) async throws {
        let schema: TenantSchema
        do {
            schema = try await context.instances.withSession(instance, logger: context.logger) { connection in
                try await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: context.logger)
                let schema = try await SchemaReader.read(tenant: tenant, on: connection, logger: context.logger)
                try await connection.execute("ROLLBACK", logger: context.logger)
                return schema
            }
        } catch let refusal as PlanRefusal {
            throw refusal
        } catch {
            throw PlanRefusal.unavailable("cannot read the schema of tenant \(tenant) on instance \(instance): \(DatabaseError(running: "reading the catalog", error: error).message)")
        }
        guard schema.unsupported.isEmpty else {
            throw PlanRefusal.failedPrecondition(schema.unsupported.map { "\($0) cannot be copied" })
        }
    }

    public func run(_ params: Params, _ context: JobContext) async throws {
        let copy = TenantCopy(sourceInstance: params.sourceInstance, sourceTenant: params.sourceTenant,
                              targetInstance: params.targetInstance, targetTenant: params.targetTenant,
                              widths: params.widths, hooks: hooks)
        context.progress.setTotals(tenants: 1)
        let tables = try await copy.run(context)
        context.progress.addDone(tenants: 1)
        context.setResult(JobResult.with { $0.tables = tables })
    }
}
