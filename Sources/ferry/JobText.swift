import FerryProtocol
import Foundation

/// How jobs read in the CLI's human output: shared by get, list, start, cancel and watch.
enum JobText {
    /// The job id's first 8 characters, as in the live display.
    static func short(_ id: String) -> String { String(id.prefix(8)) }

    /// Where the job moves data: `eu-1/acme → eu-2/acme`.
    static func route(_ job: Job) -> String {
        switch job.params.params {
        case .clone(let p):
            return "\(p.sourceInstance)/\(p.sourceTenant) → \(p.targetInstance)/\(p.targetTenant)"
        case .export(let p):
            let artifact = job.result.artifactID.isEmpty ? "archive" : "artifact \(job.result.artifactID)"
            return "\(p.sourceInstance)/\(p.sourceTenant) → \(artifact)"
        case .import(let p):
            return "artifact \(p.artifactID) → \(p.targetInstance)/\(p.targetTenant)"
        case .instanceReplace(let p):
            let which = p.tenants.isEmpty ? "all tenants" : p.tenants.count == 1 ? "tenant \(p.tenants[0])" : "\(p.tenants.count) tenants"
            return "\(p.sourceInstance) → \(p.targetInstance) (\(which))"
        case nil:
            return "-"
        }
    }

    /// What is done so far: tenants for an instance_replace, tables otherwise.
    static func counts(_ progress: JobProgress, kind: JobKind) -> (done: Int64, total: Int64, unit: String) {
        if kind == .instanceReplace { return (progress.tenantsDone, progress.tenantsTotal, "tenants") }
        return (progress.tablesDone, progress.tablesTotal, "tables")
    }

    /// `data 3/7 tables, 1,234,567 rows, 45.6 MB`.
    static func progress(_ progress: JobProgress, kind: JobKind) -> String {
        var parts: [String] = []
        let (done, total, unit) = counts(progress, kind: kind)
        if total > 0 { parts.append("\(done)/\(total) \(unit)") }
        if progress.rowsCopied > 0 { parts.append("\(grouped(progress.rowsCopied)) rows") }
        if progress.bytesCopied > 0 { parts.append(byteSize(progress.bytesCopied)) }
        let figures = parts.joined(separator: ", ")
        if progress.phase.isEmpty { return figures.isEmpty ? "-" : figures }
        return figures.isEmpty ? progress.phase : "\(progress.phase) \(figures)"
    }

    /// Seconds from start to end (or to now while it runs).
    static func duration(_ job: Job) -> Double? {
        guard job.hasStartedAt else { return nil }
        let end = job.hasFinishedAt ? job.finishedAt.seconds1970 : Date().timeIntervalSince1970
        return max(0, end - job.startedAt.seconds1970)
    }

    /// The line that ends a watch: the verified outcome, or why it failed.
    static func outcome(_ job: Job) -> String {
        let head = "\(job.kind.label) \(job.id) \(job.status.name)"
        let took = duration(job).map { " in \(shortDuration($0))" } ?? ""
        switch job.status {
        case .succeeded:
            return "\(head)\(took): \(verified(job))"
        case .failed:
            let error = job.error
            let retry = error.retryable ? "retryable: `ferry rerun \(job.id)` resumes it" : "fix the cause, then `ferry rerun \(job.id)` resumes it"
            var text = "\(head)\(took): \(error.code): \(error.message) (\(retry))"
            if job.kind == .instanceReplace, !job.result.tenants.isEmpty { text += "\n" + tenantsLine(job.result) }
            return text
        case .cancelled:
            return "\(head)\(took) (`ferry rerun \(job.id)` resumes it)"
        default:
            return "\(head): \(progress(job.progress, kind: job.kind))"
        }
    }

    /// What a succeeded job verified.
    static func verified(_ job: Job) -> String {
        let result = job.result
        switch job.kind {
        case .export:
            return "artifact \(result.artifactID), \(job.progress.tablesDone) tables, \(grouped(job.progress.rowsCopied)) rows written and checksummed"
        case .instanceReplace:
            return tenantsLine(result)
        default:
            let rows = result.tables.reduce(Int64(0)) { $0 + $1.rows }
            return "\(result.tables.count) tables verified, \(grouped(rows)) rows, row counts and checksums equal on both sides"
        }
    }

    /// `8 tenants succeeded: a, b, …` (and the failed ones).
    static func tenantsLine(_ result: JobResult) -> String {
        let succeeded = result.tenants.filter { $0.status == .tenantSucceeded }.map(\.tenant)
        let failed = result.tenants.filter { $0.status == .tenantFailed }.map(\.tenant)
        let other = result.tenants.count - succeeded.count - failed.count
        var parts = ["\(succeeded.count) of \(result.tenants.count) tenants copied and verified"]
        if !failed.isEmpty { parts.append("failed: \(failed.joined(separator: ", "))") }
        if other > 0 { parts.append("\(other) not finished") }
        return parts.joined(separator: "; ")
    }
}
