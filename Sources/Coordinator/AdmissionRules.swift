import FerryProtocol
import Foundation
import JobStore

/// The rules of admission as pure functions: what the database holds goes in (read under the
/// instance locks), answers come out. The coordinator reads, calls these, and writes; keeping
/// the rules apart lets them be tested without a database, and keeps a batch of requests
/// decided exactly as if each had been admitted alone, one after the other.
public enum AdmissionRules {
    /// A RUNNING job's touch of one instance (and tenant).
    public struct RunningTouch: Sendable, Hashable {
        public var id: UUID
        public var touch: JobTouch

        public init(id: UUID, touch: JobTouch) {
            self.id = id
            self.touch = touch
        }
    }

    /// What admission found for a job's touches.
    public struct Verdict: Sendable, Equatable {
        /// Instances at their cap, with the RUNNING jobs that fill them (sorted).
        public var overCap: [String: [UUID]] = [:]
        /// RUNNING jobs that write the same (instance, tenant) (sorted).
        public var conflicts: [UUID] = []
        /// QUEUED jobs waiting on any of the same instances.
        public var queuedAhead = 0

        public init(overCap: [String: [UUID]] = [:], conflicts: [UUID] = [], queuedAhead: Int = 0) {
            self.overCap = overCap
            self.conflicts = conflicts
            self.queuedAhead = queuedAhead
        }

        public var admissible: Bool { overCap.isEmpty && conflicts.isEmpty && queuedAhead == 0 }

        /// Why a job waits, for the log.
        public var reason: String {
            if let (instance, running) = overCap.min(by: { $0.key < $1.key }) {
                return "instance \(instance) already runs \(running.count) jobs"
            }
            if !conflicts.isEmpty { return "a running job writes the same tenant" }
            return "\(queuedAhead) queued job(s) ahead"
        }

        /// RESOURCE_EXHAUSTED with `runningJobIds`, `maxRunningPerInstance`, and
        /// `tenantConflictJobIds` / `queuedAhead` when they apply.
        public func refusal(cap: Int) -> RPCError {
            let running = Set(overCap.values.joined()).union(conflicts).map { $0.uuidString.lowercased() }.sorted()
            var details: [String: JSONValue] = [
                "runningJobIds": .array(running.map(JSONValue.string)),
                "maxRunningPerInstance": .number(Double(cap)),
            ]
            if !conflicts.isEmpty { details["tenantConflictJobIds"] = .array(conflicts.map { .string($0.uuidString.lowercased()) }) }
            if queuedAhead > 0 { details["queuedAhead"] = .number(Double(queuedAhead)) }
            let message: String
            if let (instance, jobs) = overCap.min(by: { $0.key < $1.key }) {
                message = "instance \(instance) is at its cap of \(cap) running jobs; set queue: true to wait (running: \(jobs.map { $0.uuidString.lowercased() }.joined(separator: ", ")))"
            } else if !conflicts.isEmpty {
                message = "a running job writes the same tenant (\(conflicts.map { $0.uuidString.lowercased() }.joined(separator: ", "))); set queue: true to wait"
            } else {
                message = "\(queuedAhead) queued job(s) wait ahead on the same instances; set queue: true to wait in line"
            }
            return RPCError(.resourceExhausted, message, details: .object(details))
        }
    }

    /// What stands in the way of `touches`: instances whose RUNNING jobs reach `cap`, RUNNING
    /// jobs writing the same tenant, and `queuedAhead` jobs waiting in line.
    public static func verdict(for touches: [JobTouch], running: [RunningTouch], queuedAhead: Int, cap: Int) -> Verdict {
        let instances = Set(touches.map(\.instance))
        var perInstance: [String: Set<UUID>] = [:]
        var conflicts = Set<UUID>()
        for theirs in running where instances.contains(theirs.touch.instance) {
            perInstance[theirs.touch.instance, default: []].insert(theirs.id)
            if touches.contains(where: { $0.collides(with: theirs.touch) }) { conflicts.insert(theirs.id) }
        }
        var verdict = Verdict()
        for (instance, jobs) in perInstance where jobs.count >= cap {
            verdict.overCap[instance] = jobs.sorted { $0.uuidString < $1.uuidString }
        }
        verdict.conflicts = conflicts.sorted { $0.uuidString < $1.uuidString }
        verdict.queuedAhead = queuedAhead
        return verdict
    }

    // MARK: Batches

    /// What the database holds for a batch, read under the locks of all its instances.
    public struct Snapshot: Sendable {
        /// The batch's instances that are registered.
        public var registered: Set<String> = []
        /// Every RUNNING job's touches on the batch's instances.
        public var running: [RunningTouch] = []
        /// Distinct QUEUED jobs touching any of an instance set (keyed by the sorted set).
        public var queued: [[String]: Int] = [:]
        /// Jobs already made under the batch's request ids.
        public var byRequestID: [String: JobRecord] = [:]
        /// The jobs the batch's reruns rerun.
        public var predecessors: [UUID: JobRecord] = [:]
        /// The rerun each of those already has, if any.
        public var reruns: [UUID: UUID] = [:]

        public init() {}
    }

    /// The answer to one request of a batch.
    public enum Decision: Sendable {
        /// Insert a new job (`id`) with this status; a rerun carries its predecessor.
        case insert(id: UUID, status: JobStatus, predecessor: JobRecord?)
        /// A repeated request id: the job it made before.
        case existing(JobRecord)
        /// A request id repeated within the batch: the job the earlier request (at this index)
        /// inserts.
        case sameAs(Int)
        case refused(RPCError)

        public var insertedStatus: JobStatus? {
            if case .insert(_, let status, _) = self { return status }
            return nil
        }
    }

    /// Decides each request in order, as if each were admitted alone after the ones before
    /// it: what an earlier request of the batch inserts counts for the later ones (its RUNNING
    /// slot, its place in the queue, its request id, its rerun). `ids` are the new jobs' ids,
    /// one per request.
    public static func decide(_ requests: [Coordinator.Request], ids: [UUID], snapshot: Snapshot, cap: Int) -> [Decision] {
        precondition(ids.count == requests.count)
        var running = snapshot.running
        /// QUEUED by this batch: each one's instances.
        var queuedHere: [Set<String>] = []
        var madeHere: [String: Int] = [:]
        var rerunHere: [UUID: UUID] = [:]
        var decisions: [Decision] = []
        decisions.reserveCapacity(requests.count)
        for (index, request) in requests.enumerated() {
            // 1. A repeated request id answers with the job it made.
            if let requestID = request.requestID {
                if let earlier = madeHere[requestID] {
                    let first = requests[earlier]
                    if first.params == request.params, first.rerunOf == request.rerunOf {
                        decisions.append(.sameAs(earlier))
                    } else {
                        decisions.append(.refused(differentRequest(requestID, job: ids[earlier])))
                    }
                    continue
                }
                if let existing = snapshot.byRequestID[requestID] {
                    decisions.append(sameRequest(existing, request).map(Decision.existing) ?? .refused(differentRequest(requestID, job: existing.id)))
                    continue
                }
            }
            // 2. Every instance must be registered.
            let instances = JobPlan.instances(request.touches)
            if let missing = instances.first(where: { !snapshot.registered.contains($0) }) {
                decisions.append(.refused(RPCError(.notFound, "instance \(missing) is not registered (Instances/PutInstance)")))
                continue
            }
            // 3. A rerun needs a FAILED or CANCELLED job that has no rerun yet.
            var predecessor: JobRecord?
            if let rerunOf = request.rerunOf {
                guard let job = snapshot.predecessors[rerunOf] else {
                    decisions.append(.refused(RPCError(.notFound, "job \(rerunOf.uuidString.lowercased()) not found")))
                    continue
                }
                if let refusal = rerunRefusal(job) {
                    decisions.append(.refused(refusal))
                    continue
                }
                if let successor = rerunHere[rerunOf] ?? snapshot.reruns[rerunOf] {
                    decisions.append(.refused(alreadyRerun(rerunOf, as: successor)))
                    continue
                }
                predecessor = job
            }
            // 4. Capacity, tenants, the queue.
            let instanceSet = Set(instances)
            let ahead = (snapshot.queued[instances] ?? 0) + queuedHere.count { !$0.isDisjoint(with: instanceSet) }
            let verdict = verdict(for: request.touches, running: running, queuedAhead: ahead, cap: cap)
            let status: JobStatus
            if verdict.admissible {
                status = .running
                running += request.touches.map { RunningTouch(id: ids[index], touch: $0) }
            } else if request.queue {
                status = .queued
                queuedHere.append(instanceSet)
            } else {
                decisions.append(.refused(verdict.refusal(cap: cap)))
                continue
            }
            if let requestID = request.requestID { madeHere[requestID] = index }
            if let rerunOf = request.rerunOf { rerunHere[rerunOf] = ids[index] }
            decisions.append(.insert(id: ids[index], status: status, predecessor: predecessor))
        }
        return decisions
    }

    /// The next batch a free connection takes from `pending` (each request's instances, in
    /// arrival order), as indices into it, in order. It never touches an instance in `busy`
    /// (another connection's batch holds it), and never passes a request over for a later
    /// one on the same instance (arrival order per instance). Its instances are those of its
    /// first request: later requests join when they need no other instance, so one instance
    /// whose lock is slow to come holds up only the requests that need it.
    public static func nextBatch(_ pending: [[String]], busy: Set<String>, limit: Int) -> [Int] {
        var chosen: [Int] = []
        var batch: Set<String>?
        var passedOver = Set<String>()
        for (index, instances) in pending.enumerated() {
            guard chosen.count < limit else { break }
            let free = instances.allSatisfy { !busy.contains($0) && !passedOver.contains($0) }
            if free, batch == nil {
                batch = Set(instances)
                chosen.append(index)
            } else if free, let batch, instances.allSatisfy(batch.contains) {
                chosen.append(index)
            } else {
                passedOver.formUnion(instances)
            }
        }
        return chosen
    }

    /// The order advisory locks are taken in: by key, then by name (names sharing a key take
    /// the same lock, and a lock held twice by one transaction is just held). Every
    /// transaction takes its locks in this one order, so none waits on another in a cycle.
    public static func lockOrder(_ keys: [(name: String, key: Int32)]) -> [(name: String, key: Int32)] {
        keys.sorted { ($0.key, $0.name) < ($1.key, $1.name) }
    }

    // MARK: Refusals

    /// A repeated request id must name the same request; nil when it does not.
    public static func sameRequest(_ existing: JobRecord, _ request: Coordinator.Request) -> JobRecord? {
        existing.params == request.params && existing.rerunOf == request.rerunOf ? existing : nil
    }

    public static func differentRequest(_ requestID: String, job: UUID) -> RPCError {
        RPCError(.alreadyExists, "requestId \"\(requestID)\" was already used for a different request (job \(job.uuidString.lowercased()))",
                 details: .object(["jobId": .string(job.uuidString.lowercased())]))
    }

    /// RerunJob works from FAILED or CANCELLED only.
    public static func rerunRefusal(_ job: JobRecord) -> RPCError? {
        guard job.status == .failed || job.status == .cancelled else {
            return RPCError(.failedPrecondition, "job \(job.id.uuidString.lowercased()) is \(job.status.name); only FAILED or CANCELLED jobs can be rerun")
        }
        return nil
    }

    public static func alreadyRerun(_ id: UUID, as successor: UUID?) -> RPCError {
        let successor = successor?.uuidString.lowercased() ?? "?"
        return RPCError(.failedPrecondition, "job \(id.uuidString.lowercased()) was already rerun as \(successor); rerun that one instead",
                        details: .object(["rerunJobId": .string(successor)]))
    }

    /// An admission that could not lock `instance` in time: another admission holds it (a
    /// replica stalled in the middle of one). Retryable; nothing was written.
    public static func lockTimeout(_ instance: String, after timeout: Duration) -> RPCError {
        RPCError(.unavailable, "instance \(instance) is locked by another admission that has not finished within \(timeout.formattedSeconds); nothing was admitted, retry",
                 details: .object(["instance": .string(instance), "retryable": .bool(true)]))
    }
}

extension Duration {
    /// "5 s", "0.5 s".
    var formattedSeconds: String {
        let seconds = Double(components.seconds) + Double(components.attoseconds) / 1e18
        return seconds == seconds.rounded() ? "\(Int(seconds)) s" : "\(seconds) s"
    }
}
