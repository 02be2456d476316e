import FerryProtocol
import Foundation
import JobStore

extension Coordinator {
    /// A repeated requestId must name the same request (the same parameters, a rerun of the
    /// same job); it then returns the job the first call made, else ALREADY_EXISTS. The
    /// server checks this before planning, since a repeat's plan would find the first call's
    /// own work in the way.
    public static func sameRequest(_ existing: JobRecord, params: JobParams, rerunOf: UUID?) throws -> JobRecord {
        try sameRequest(existing, Request(params: params, touches: [], queue: false, requestID: existing.requestID, createdBy: nil, rerunOf: rerunOf))
    }
}
