@testable import Coordinator
import FerryProtocol
import Foundation
import JobStore
import Testing

/// The admission rules without a database: the verdict for one job (cap, tenant collision,
/// queue), the decision for a batch (which must be what admitting its requests one by one
/// gives), the batching of waiting requests, and the lock order.
@Suite struct AdmissionRulesTests {
    let ids = (0..<8).map { _ in UUID() }.sorted { $0.uuidString < $1.uuidString }

    func clone(_ instance: String, _ source: String = "src", to target: String, queue: Bool = true, requestID: String? = nil, rerunOf: UUID? = nil) -> Coordinator.Request {
        let params = JobParams.with { $0.clone = .clone(from: instance, source, to: instance, target) }
        return Coordinator.Request(params: params, touches: touches(instance, source, instance, target), queue: queue, requestID: requestID, createdBy: "t", rerunOf: rerunOf)
    }

    /// What a clone touches: it reads its source tenant and writes its target tenant.
    func touches(_ source: String, _ sourceTenant: String, _ target: String, _ targetTenant: String) -> [JobTouch] {
        [JobTouch(instance: source, tenant: sourceTenant, writes: false), JobTouch(instance: target, tenant: targetTenant, writes: true)]
    }

    func running(_ id: UUID, _ instance: String, writes tenant: String) -> [AdmissionRules.RunningTouch] {
        [.init(id: id, touch: JobTouch(instance: instance, tenant: "src", writes: false)),
         .init(id: id, touch: JobTouch(instance: instance, tenant: tenant, writes: true))]
    }

    func record(_ id: UUID, _ request: Coordinator.Request, status: JobStatus) -> JobRecord {
        JobRecord(id: id, status: status, params: request.params, rerunOf: request.rerunOf, requestID: request.requestID)
    }

    func snapshot(_ instances: Set<String> = ["x", "y", "z"], running: [AdmissionRules.RunningTouch] = []) -> AdmissionRules.Snapshot {
        var snapshot = AdmissionRules.Snapshot()
        snapshot.registered = instances
        snapshot.running = running
        return snapshot
    }

    // MARK: Verdict

    @Test func capCountsDistinctRunningJobsPerInstance() {
        let touches = clone("x", to: "new").touches
        let two = running(ids[0], "x", writes: "a") + running(ids[1], "x", writes: "b")
        #expect(AdmissionRules.verdict(for: touches, running: two, queuedAhead: 0, cap: 3).admissible)
        let three = two + running(ids[2], "x", writes: "c") + running(ids[3], "y", writes: "d")
        let verdict = AdmissionRules.verdict(for: touches, running: three, queuedAhead: 0, cap: 3)
        #expect(!verdict.admissible)
        #expect(verdict.overCap == ["x": [ids[0], ids[1], ids[2]]])
        #expect(verdict.conflicts.isEmpty)
        let refusal = verdict.refusal(cap: 3)
        #expect(refusal.code == .resourceExhausted)
        #expect(refusal.message.hasPrefix("instance x is at its cap of 3 running jobs; set queue: true to wait"))
        #expect(refusal.details?["runningJobIds"] == .array(ids[0...2].map { .string($0.uuidString.lowercased()) }))
        #expect(refusal.details?["maxRunningPerInstance"] == .number(3))
        #expect(refusal.details?["queuedAhead"] == nil)
        #expect(refusal.details?["tenantConflictJobIds"] == nil)
    }

    @Test func tenantCollisionIsTwoWritesOfOneTenant() {
        let writesA = clone("x", to: "a").touches
        let busy = running(ids[0], "x", writes: "a")
        let verdict = AdmissionRules.verdict(for: writesA, running: busy, queuedAhead: 0, cap: 3)
        #expect(verdict.conflicts == [ids[0]])
        let refusal = verdict.refusal(cap: 3)
        #expect(refusal.message.hasPrefix("a running job writes the same tenant (\(ids[0].uuidString.lowercased()))"))
        #expect(refusal.details?["tenantConflictJobIds"] == .array([.string(ids[0].uuidString.lowercased())]))
        // Reading the tenant another job writes, or writing another tenant, is no collision.
        #expect(AdmissionRules.verdict(for: clone("x", "a", to: "b").touches, running: busy, queuedAhead: 0, cap: 3).admissible)
        // The same tenant name on another instance is another tenant.
        #expect(AdmissionRules.verdict(for: clone("y", to: "a").touches, running: busy, queuedAhead: 0, cap: 3).admissible)
        // A whole-instance write (empty tenant) collides with any write on the instance.
        let wholeInstance = [JobTouch(instance: "x", tenant: "", writes: true)]
        #expect(AdmissionRules.verdict(for: wholeInstance, running: busy, queuedAhead: 0, cap: 3).conflicts == [ids[0]])
    }

    @Test func anyoneQueuedAheadKeepsANewJobOut() {
        let verdict = AdmissionRules.verdict(for: clone("x", to: "a").touches, running: [], queuedAhead: 2, cap: 3)
        #expect(!verdict.admissible)
        let refusal = verdict.refusal(cap: 3)
        #expect(refusal.message == "2 queued job(s) wait ahead on the same instances; set queue: true to wait in line")
        #expect(refusal.details?["queuedAhead"] == .number(2))
        #expect(refusal.details?["runningJobIds"] == .array([]))
        #expect(verdict.reason == "2 queued job(s) ahead")
    }

    // MARK: Batches

    @Test func batchFillsTheCapThenQueuesInOrder() {
        let requests = (0..<5).map { clone("x", to: "t\($0)") }
        let decisions = AdmissionRules.decide(requests, ids: Array(ids[0..<5]), snapshot: snapshot(), cap: 3)
        #expect(decisions.map(\.insertedStatus) == [.running, .running, .running, .queued, .queued])
    }

    @Test func batchRefusalNamesTheJobsTheBatchAdmitted() {
        let requests = [clone("x", to: "a", queue: false), clone("x", to: "b", queue: false), clone("x", to: "c", queue: false)]
        let decisions = AdmissionRules.decide(requests, ids: Array(ids[0..<3]), snapshot: snapshot(), cap: 2)
        #expect(decisions[0].insertedStatus == .running)
        #expect(decisions[1].insertedStatus == .running)
        guard case .refused(let error) = decisions[2] else { Issue.record("expected a refusal, got \(decisions[2])"); return }
        #expect(error.code == .resourceExhausted)
        #expect(error.details?["runningJobIds"] == .array([ids[0], ids[1]].map { .string($0.uuidString.lowercased()) }))
    }

    @Test func aJobQueuedByTheBatchIsAheadOfLaterOnesOnItsInstances() {
        // x is full; the first request queues there, so a later request on x queues behind it
        // even when it would not collide, while one on z goes.
        let full = running(ids[7], "x", writes: "busy")
        let requests = [clone("x", to: "a"), clone("x", to: "b", queue: false), clone("z", to: "c", queue: false)]
        let decisions = AdmissionRules.decide(requests, ids: Array(ids[0..<3]), snapshot: snapshot(running: full), cap: 1)
        #expect(decisions[0].insertedStatus == .queued)
        guard case .refused(let error) = decisions[1] else { Issue.record("expected a refusal, got \(decisions[1])"); return }
        #expect(error.details?["runningJobIds"] == .array([.string(ids[7].uuidString.lowercased())]))
        #expect(decisions[2].insertedStatus == .running)
    }

    @Test func queuedCountFromTheDatabaseCountsForTheRequestsOnThoseInstances() {
        var state = snapshot()
        state.queued[["x"]] = 4
        let decisions = AdmissionRules.decide([clone("x", to: "a", queue: false), clone("y", to: "b", queue: false)], ids: Array(ids[0..<2]), snapshot: state, cap: 3)
        guard case .refused(let error) = decisions[0] else { Issue.record("expected a refusal, got \(decisions[0])"); return }
        #expect(error.details?["queuedAhead"] == .number(4))
        #expect(decisions[1].insertedStatus == .running)
    }

    @Test func repeatedRequestIDsAnswerTheFirstJob() {
        let first = clone("x", to: "a", requestID: "k1")
        let same = clone("x", to: "a", requestID: "k1")
        let different = clone("x", to: "other", requestID: "k1")
        let decisions = AdmissionRules.decide([first, same, different], ids: Array(ids[0..<3]), snapshot: snapshot(), cap: 3)
        #expect(decisions[0].insertedStatus == .running)
        guard case .sameAs(0) = decisions[1] else { Issue.record("expected the first job, got \(decisions[1])"); return }
        guard case .refused(let error) = decisions[2] else { Issue.record("expected ALREADY_EXISTS, got \(decisions[2])"); return }
        #expect(error.code == .alreadyExists)
        #expect(error.details?["jobId"] == .string(ids[0].uuidString.lowercased()))

        // A job the database already holds under the key.
        var state = snapshot()
        state.byRequestID["k2"] = record(ids[5], clone("x", to: "a", requestID: "k2"), status: .succeeded)
        let again = AdmissionRules.decide([clone("x", to: "a", requestID: "k2"), clone("y", to: "a", requestID: "k2")], ids: Array(ids[0..<2]), snapshot: state, cap: 3)
        guard case .existing(let existing) = again[0] else { Issue.record("expected the existing job, got \(again[0])"); return }
        #expect(existing.id == ids[5])
        guard case .refused(let mismatch) = again[1] else { Issue.record("expected ALREADY_EXISTS, got \(again[1])"); return }
        #expect(mismatch.code == .alreadyExists)

        // A refused request made nothing: the key is free for the next one.
        let refusedFirst = AdmissionRules.decide([clone("q", to: "a", requestID: "k3"), clone("x", to: "a", requestID: "k3")], ids: Array(ids[0..<2]), snapshot: snapshot(), cap: 3)
        guard case .refused(let notFound) = refusedFirst[0] else { Issue.record("expected NOT_FOUND, got \(refusedFirst[0])"); return }
        #expect(notFound.code == .notFound)
        #expect(notFound.message == "instance q is not registered (Instances/PutInstance)")
        // The first one was never made, so the second (other params, same key) is judged on
        // its own.
        #expect(refusedFirst[1].insertedStatus == .running)
    }

    @Test func rerunsNeedAFinishedJobWithoutARerun() {
        let original = clone("x", to: "a")
        var state = snapshot()
        state.predecessors[ids[6]] = record(ids[6], original, status: .failed)
        state.predecessors[ids[7]] = record(ids[7], original, status: .running)
        let rerun = clone("x", to: "a", rerunOf: ids[6])
        let decisions = AdmissionRules.decide([rerun, rerun, clone("x", to: "a", rerunOf: ids[7]), clone("x", to: "a", rerunOf: ids[4])],
                                              ids: Array(ids[0..<4]), snapshot: state, cap: 3)
        guard case .insert(_, .running, let predecessor) = decisions[0] else { Issue.record("expected a rerun, got \(decisions[0])"); return }
        #expect(predecessor?.id == ids[6])
        guard case .refused(let twice) = decisions[1] else { Issue.record("expected a refusal, got \(decisions[1])"); return }
        #expect(twice.code == .failedPrecondition)
        #expect(twice.details?["rerunJobId"] == .string(ids[0].uuidString.lowercased()))
        guard case .refused(let stillRunning) = decisions[2] else { Issue.record("expected a refusal, got \(decisions[2])"); return }
        #expect(stillRunning.message == "job \(ids[7].uuidString.lowercased()) is RUNNING; only FAILED or CANCELLED jobs can be rerun")
        guard case .refused(let missing) = decisions[3] else { Issue.record("expected a refusal, got \(decisions[3])"); return }
        #expect(missing.code == .notFound)

        state.reruns[ids[6]] = ids[5]
        let later = AdmissionRules.decide([rerun], ids: [ids[0]], snapshot: state, cap: 3)
        guard case .refused(let already) = later[0] else { Issue.record("expected a refusal, got \(later[0])"); return }
        #expect(already.details?["rerunJobId"] == .string(ids[5].uuidString.lowercased()))
    }

    /// Deciding a batch at once gives what deciding its requests one at a time gives, each
    /// after the previous one's job is in the database.
    @Test(arguments: 0..<40) func batchDecisionEqualsOneByOne(seed: Int) {
        var generator = SplitMix(seed: UInt64(seed))
        let instances = ["x", "y", "z"]
        let cap = Int.random(in: 1...3, using: &generator)
        var requests: [Coordinator.Request] = []
        for _ in 0..<Int.random(in: 1...12, using: &generator) {
            let source = instances.randomElement(using: &generator)!
            let target = instances.randomElement(using: &generator)!
            let tenant = ["a", "b", "c"].randomElement(using: &generator)!
            let params = JobParams.with { $0.clone = .clone(from: source, "src", to: target, tenant) }
            requests.append(Coordinator.Request(params: params, touches: touches(source, "src", target, tenant), queue: Bool.random(using: &generator),
                                                requestID: nil, createdBy: nil))
        }
        let batchIDs = (0..<requests.count).map { _ in UUID() }
        var start = snapshot()
        // Some jobs already running, some queued.
        for index in 0..<Int.random(in: 0...3, using: &generator) {
            start.running += running(UUID(), instances.randomElement(using: &generator)!, writes: "r\(index)")
        }
        let sets = Set(requests.map { JobPlan.instances($0.touches) })
        let queuedOn = Bool.random(using: &generator) ? Set(["y"]) : []
        for set in sets { start.queued[set] = queuedOn.isDisjoint(with: set) ? 0 : 1 }

        let together = AdmissionRules.decide(requests, ids: batchIDs, snapshot: start, cap: cap).map(describe)
        var state = start
        var alone: [Seen] = []
        for (request, id) in zip(requests, batchIDs) {
            let decision = AdmissionRules.decide([request], ids: [id], snapshot: state, cap: cap)[0]
            alone.append(describe(decision))
            switch decision.insertedStatus {
            case .running?: state.running += request.touches.map { .init(id: id, touch: $0) }
            case .queued?:
                let mine = Set(JobPlan.instances(request.touches))
                for set in sets where !mine.isDisjoint(with: set) { state.queued[set, default: 0] += 1 }
            default: break
            }
        }
        #expect(together == alone)
    }

    enum Seen: Hashable {
        case insert(UUID, JobStatus)
        case existing(UUID)
        case sameAs(Int)
        case refused(RPCError)
    }

    func describe(_ decision: AdmissionRules.Decision) -> Seen {
        switch decision {
        case .insert(let id, let status, _): .insert(id, status)
        case .existing(let record): .existing(record.id)
        case .sameAs(let index): .sameAs(index)
        case .refused(let error): .refused(error)
        }
    }

    // MARK: Scheduling and locks

    @Test func nextBatchKeepsArrivalOrderPerInstance() {
        // The batch is x's: the first request on x, and the later ones that need only x, up
        // to one that needs x and y (the x after it waits behind it).
        #expect(AdmissionRules.nextBatch([["x"], ["y"], ["x"], ["x", "y"], ["x"]], busy: [], limit: 10) == [0, 2])
        // A request needing x and y came before the last x: that x waits behind it.
        #expect(AdmissionRules.nextBatch([["x"], ["x", "y"], ["x"]], busy: [], limit: 10) == [0])
        // Busy instances (another connection's batch) are skipped, without passing anyone
        // over on them.
        #expect(AdmissionRules.nextBatch([["x"], ["y"], ["y"], ["x"]], busy: ["x"], limit: 10) == [1, 2])
        #expect(AdmissionRules.nextBatch([["x"], ["x", "y"], ["y"]], busy: ["x"], limit: 10) == [])
        #expect(AdmissionRules.nextBatch([["x"], ["x"], ["x"]], busy: [], limit: 2) == [0, 1])
        #expect(AdmissionRules.nextBatch([["x", "y"], ["y"], ["x"], ["z"]], busy: [], limit: 10) == [0, 1, 2])
    }

    @Test func locksGoInKeyOrderThenNameOrder() {
        let order = AdmissionRules.lockOrder([(name: "a", key: 9), (name: "b", key: -4), (name: "d", key: 2), (name: "c", key: 2)])
        #expect(order.map(\.name) == ["b", "c", "d", "a"])
    }

    @Test func lockTimeoutIsRetryableAndNamesTheInstance() {
        let error = AdmissionRules.lockTimeout("hold-x", after: .seconds(5))
        #expect(error.code == .unavailable)
        #expect(error.message.contains("instance hold-x"))
        #expect(error.message.contains("5 s"))
        #expect(error.details?["instance"] == .string("hold-x"))
    }
}

/// A seeded generator, so a failing case can be run again.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
