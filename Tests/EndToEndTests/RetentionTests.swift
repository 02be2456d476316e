import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import PostgresNIO
import Testing

/// The retention worker end to end, through `ferryd-test sweep` (one sweep, under the lease,
/// printing what it did) and serving replicas: what it deletes, in what order, what a crash
/// between a folder and its row leaves, and above all what it never deletes.
@Suite(.serialized) struct RetentionTests {
    /// A migrated control database of its own (no replica serves it unless the test starts one).
    private func migratedControl() async throws -> DatabaseURL {
        let control = try await TestPostgres.shared.freshDatabase("retention")
        let result = try await RunningProcess.run([FerryBinaries.ferryd, "migrate", "--database-url", control.secretURLString])
        try #require(result.status == 0, "\(result.output)")
        return control
    }

    /// Runs `ferryd-test sweep`; returns the process result and its JSON summary (if it printed one).
    private func sweep(_ control: DatabaseURL, _ store: TestArtifactStore?, _ arguments: [String] = [], environment: [String: String] = [:]) async throws -> (ProcessResult, [String: Any]) {
        let result = try await RunningProcess.run(sweepCommand(control, store, arguments), environment: ["FERRY_LOG_LEVEL": "warning"].merging(environment) { $1 })
        return (result, Self.summary(result))
    }

    private func sweepCommand(_ control: DatabaseURL, _ store: TestArtifactStore?, _ arguments: [String] = []) -> [String] {
        [FerryBinaries.ferrydTest, "sweep", "--database-url", control.secretURLString] + (store.map { ["--artifact-dir", $0.directory] } ?? []) + arguments
    }

    private static func summary(_ result: ProcessResult) -> [String: Any] {
        for line in result.lines.reversed() where line.hasPrefix("{") {
            if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] { return object }
        }
        return [:]
    }

    private func count(_ summary: [String: Any], _ key: String) -> Int { (summary[key] as? NSNumber)?.intValue ?? -1 }

    private func rowExists(_ control: DatabaseURL, _ id: UUID) async throws -> Bool {
        try await scalar(control, "SELECT count(*)::int FROM job_artifacts WHERE id = '\(id.lowercased)'") == 1
    }

    // MARK: Expired artifacts

    @Test func expiredArtifactsGoFolderThenRowAndEverythingElseStays() async throws {
        let control = try await migratedControl()
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        let export = try await ControlRows.job(control, kind: "export", status: "SUCCEEDED")
        // expired: deleted
        let expired = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "-1 hour")
        try store.folder(expired, manifestJob: export)
        // not expired: kept
        let fresh = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "1 hour")
        try store.folder(fresh, manifestJob: export)
        // expired but read by a QUEUED and by a RUNNING import: kept
        let readByQueued = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "-1 hour")
        try store.folder(readByQueued, manifestJob: export)
        try await ControlRows.job(control, kind: "import", status: "QUEUED", params: .importing(readByQueued.uuidString))
        let readByRunning = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "-1 hour")
        try store.folder(readByRunning, manifestJob: export)
        try await ControlRows.job(control, kind: "import", status: "RUNNING", params: .importing(readByRunning.lowercased))
        // expired, read by a finished import only: deleted
        let readByFinished = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "-1 hour")
        try store.folder(readByFinished, manifestJob: export)
        try await ControlRows.job(control, kind: "import", status: "SUCCEEDED", params: .importing(readByFinished.lowercased))
        // expired, in another store (this replica sees another directory): kept, files and row
        let elsewhere = try await ControlRows.artifact(control, job: export, storeID: UUID().lowercased, expiresIn: "-1 hour")
        try store.folder(elsewhere, manifestJob: export)
        // expired, folder already gone (a deletion that crashed after the files): the row goes
        let folderGone = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "-1 hour")

        let (result, summary) = try await sweep(control, store)
        #expect(result.status == 0, "\(result.output)")
        #expect(count(summary, "artifactsDeleted") == 2, "\(summary)")
        #expect(count(summary, "artifactRowsFinished") == 1, "\(summary)")
        #expect(count(summary, "artifactsSkippedInUse") == 2, "\(summary)")
        #expect(count(summary, "artifactsSkippedOtherStore") == 1, "\(summary)")
        #expect(count(summary, "failures") == 0 && summary["storeId"] as? String == store.storeID, "\(summary)")
        #expect(result.output.contains("another artifact store"), "the skip is a warning: \(result.output)")

        for gone in [expired, readByFinished] {
            #expect(!store.exists(gone))
            #expect(try await rowExists(control, gone) == false)
        }
        #expect(try await rowExists(control, folderGone) == false)
        for kept in [fresh, readByQueued, readByRunning, elsewhere] {
            #expect(store.exists(kept))
            #expect(try await rowExists(control, kept))
        }
        // Jobs are never deleted, the export's included.
        #expect(try await scalar(control, "SELECT count(*)::int FROM jobs") == 4)

        // Without an artifact directory a sweep leaves artifacts alone (events only).
        let (bare, bareSummary) = try await sweep(control, nil)
        #expect(bare.status == 0 && bareSummary["storeId"] == nil && count(bareSummary, "artifactsDeleted") == 0, "\(bare.output)")
        #expect(try await ControlRows.artifactCount(control) == 4)
    }

    @Test func aCrashBetweenFolderAndRowIsFinishedByTheNextSweep() async throws {
        let control = try await migratedControl()
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        let export = try await ControlRows.job(control, kind: "export", status: "SUCCEEDED")
        let id = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "-1 minute")
        try store.folder(id, manifestJob: export)

        // The hook kills the sweep (SIGKILL) right after the folder is deleted.
        let (crashed, _) = try await sweep(control, store, environment: ["FERRY_TEST_RETENTION_CRASH": "1"])
        #expect(crashed.status == 128 + SIGKILL, "\(crashed.output)")
        #expect(!store.exists(id), "the folder went first")
        #expect(try await rowExists(control, id), "the row is still there")

        // The dead sweep's lease stays until it expires: another sweep is refused meanwhile.
        let (refused, _) = try await sweep(control, store, ["--lease-wait", "0"])
        #expect(refused.status == 1 && refused.output.contains("ferryd: error: the retention lease is held by ferryd-sweep:"), "\(refused.output)")
        #expect(try await rowExists(control, id))

        // Once it has expired (60 s; the test does not wait for it), the next sweep finishes the deletion.
        _ = try await scalar(control, "UPDATE leases SET expires_at = now() - interval '1 second' WHERE name = 'retention' RETURNING 1")
        let (next, summary) = try await sweep(control, store)
        #expect(next.status == 0, "\(next.output)")
        #expect(count(summary, "artifactRowsFinished") == 1 && count(summary, "artifactsDeleted") == 0, "\(summary)")
        #expect(try await rowExists(control, id) == false)
        #expect(try await scalar(control, "SELECT count(*)::int FROM jobs WHERE id = '\(export.lowercased)'") == 1)
    }

    // MARK: Staging and orphan folders

    @Test func stagingAndOrphanFoldersAreSweptAsSpecified() async throws {
        let control = try await migratedControl()
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        let running = try await ControlRows.job(control, kind: "export", status: "RUNNING")
        let failed = try await ControlRows.job(control, kind: "export", status: "FAILED")
        let succeeded = try await ControlRows.job(control, kind: "export", status: "SUCCEEDED")

        // Staging: kept for a RUNNING job; deleted for a FAILED job and for a job that does not exist;
        // names that are not Ferry's (not a lower-case UUID) are left alone.
        try store.folder(named: running.lowercased, under: ".staging", manifestJob: nil)
        try store.folder(named: failed.lowercased, under: ".staging", manifestJob: nil)
        let noSuchJob = UUID()
        try store.folder(named: noSuchJob.lowercased, under: ".staging", manifestJob: nil)
        try store.folder(named: "scratch", under: ".staging", manifestJob: nil)

        // Published folders with no row: kept while the manifest's job runs (it is about to
        // insert its row); deleted when that job ended or does not exist; without a readable
        // manifest, deleted only once older than an hour.
        let ofRunning = UUID(), ofSucceeded = UUID(), ofUnknown = UUID(), bareFresh = UUID(), bareOld = UUID(), withRow = UUID()
        try store.folder(ofRunning, manifestJob: running)
        try store.folder(ofSucceeded, manifestJob: succeeded)
        try store.folder(ofUnknown, manifestJob: UUID())
        try store.folder(bareFresh, manifestJob: nil, modifiedAgo: 50 * 60)
        try store.folder(bareOld, manifestJob: nil, modifiedAgo: 2 * 3600)
        let damaged = UUID()
        let damagedPath = try store.folder(damaged, manifestJob: nil)
        try "{ not json".write(toFile: damagedPath + "/manifest.json", atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-2 * 3600)], ofItemAtPath: damagedPath)
        // A folder a row names is never an orphan, whatever its manifest says.
        try await ControlRows.artifact(control, id: withRow, job: succeeded, storeID: store.storeID)
        try store.folder(withRow, manifestJob: failed, modifiedAgo: 5 * 3600)
        // Not Ferry's names: left alone however old.
        try store.folder(named: "notes", manifestJob: nil, modifiedAgo: 5 * 3600)
        let upper = UUID().uuidString
        try store.folder(named: upper, manifestJob: failed, modifiedAgo: 5 * 3600)
        try "keep me".write(toFile: store.directory + "/README", atomically: true, encoding: .utf8)

        let (result, summary) = try await sweep(control, store)
        #expect(result.status == 0, "\(result.output)")
        #expect(count(summary, "stagingDeleted") == 2, "\(summary)")
        #expect(count(summary, "orphansDeleted") == 4, "\(summary)")

        #expect(store.exists(named: running.lowercased, under: ".staging"))
        #expect(!store.exists(named: failed.lowercased, under: ".staging"))
        #expect(!store.exists(named: noSuchJob.lowercased, under: ".staging"))
        #expect(store.exists(named: "scratch", under: ".staging"))
        #expect(store.exists(ofRunning) && store.exists(bareFresh) && store.exists(withRow))
        #expect(!store.exists(ofSucceeded) && !store.exists(ofUnknown) && !store.exists(bareOld) && !store.exists(damaged))
        #expect(store.exists(named: "notes") && store.exists(named: upper) && store.exists(named: "README") && store.exists(named: ".ferry-store-id"))
        #expect(try await rowExists(control, withRow))

        // Once the running export has ended without a row, its published folder and staging go too.
        try await ControlRows.setStatus(control, running, "FAILED")
        let (again, second) = try await sweep(control, store)
        #expect(again.status == 0 && count(second, "stagingDeleted") == 1 && count(second, "orphansDeleted") == 1, "\(again.output)")
        #expect(!store.exists(ofRunning) && !store.exists(named: running.lowercased, under: ".staging"))
    }

    // MARK: Events

    @Test func eventsOfLongFinishedJobsGoButTheirLastAndAllOthersStay() async throws {
        let control = try await migratedControl()
        // Finished 40 days ago: its events go, but the last (its terminal STATUS) — 12,000 of them, in batches.
        let old = try await ControlRows.job(control, kind: "clone", status: "SUCCEEDED", createdAgo: "41 days", finishedAgo: "40 days")
        try await ControlRows.events(control, job: old, count: 12_000, ago: "40 days")
        let oldFailed = try await ControlRows.job(control, kind: "export", status: "FAILED", createdAgo: "95 days", finishedAgo: "90 days")
        try await ControlRows.events(control, job: oldFailed, count: 7, ago: "90 days")
        // Finished 10 days ago: kept (default retention 30 days).
        let recent = try await ControlRows.job(control, kind: "clone", status: "CANCELLED", createdAgo: "11 days", finishedAgo: "10 days")
        try await ControlRows.events(control, job: recent, count: 5, ago: "10 days")
        // Running for 60 days, or queued for as long: never finished, kept.
        let running = try await ControlRows.job(control, kind: "clone", status: "RUNNING", createdAgo: "60 days")
        try await ControlRows.events(control, job: running, count: 9, ago: "60 days")
        let queued = try await ControlRows.job(control, kind: "clone", status: "QUEUED", createdAgo: "60 days")
        try await ControlRows.events(control, job: queued, count: 1, ago: "60 days")

        let (result, summary) = try await sweep(control, nil)
        #expect(result.status == 0, "\(result.output)")
        #expect(count(summary, "eventsDeleted") == 11_999 + 6, "\(summary)")
        func events(_ job: UUID) async throws -> [Int] {
            try await control.withConnection(logger: logger) { connection in
                try await connection.execute("SELECT seq::int FROM job_events WHERE job_id = \(job) ORDER BY seq", logger: logger).map { try $0.decode(Int.self) }
            }
        }
        #expect(try await events(old) == [12_000])
        #expect(try await events(oldFailed) == [7])
        #expect(try await events(recent) == Array(1...5))
        #expect(try await events(running) == Array(1...9))
        #expect(try await events(queued) == [1])
        #expect(try await scalar(control, "SELECT count(*)::int FROM jobs") == 5)

        // A shorter retention reaches the recent job as well.
        let (short, shortSummary) = try await sweep(control, nil, ["--event-retention", "86400"])
        #expect(short.status == 0 && count(shortSummary, "eventsDeleted") == 4, "\(short.output)")
        #expect(try await events(recent) == [5])
        #expect(try await events(running) == Array(1...9))
    }

    // MARK: Nothing else

    /// Real jobs of the engine (checkpoints, tenant claims, events, a rerun lineage) plus
    /// instance_replace results and artifacts, everything moved ten months into the past:
    /// the sweep deletes the expired artifacts and the old events, and every row of every
    /// other table is exactly as it was.
    @Test func aSweepTenMonthsLaterDeletesNothingButEventsAndExpiredArtifacts() async throws {
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        // The replica serves throughout (WatchJob is checked at the end); its own worker swept
        // once at start-up and is not due again for an hour.
        try await Replicas.with(count: 1, instances: 1, jobMs: 200, jobSteps: 4, arguments: ["--artifact-dir", store.directory]) { replicas in
            let control = replicas.control
            try await waitForFirstSweep(control)
            let client = try await replicas.client(0)
            defer { client.close() }
            // One that writes (claims and creates its target tenant), one that fails and is
            // rerun (resume state across a lineage), one plain.
            _ = try await replicas.instances["i0"]!.withConnection(logger: logger) { try await $0.execute("CREATE SCHEMA src", logger: logger) }
            let writing = try await client.startJob(cloneRequest(instance: "i0", target: "write_t"))
            let failing = try await client.startJob(cloneRequest(instance: "i0", target: "fail_t"))
            let plain = try await client.startJob(cloneRequest(instance: "i0", target: "plain"))
            for job in [writing, failing, plain] { _ = try await client.waitFor(job.id) { $0.status.isTerminal } }
            let rerun = try await client.rerun(failing.id)
            _ = try await client.waitFor(rerun.id) { $0.status.isTerminal }
            // What the engine cannot make in this build: instance_replace results, artifacts.
            let replace = try await ControlRows.job(control, kind: "instance_replace", status: "FAILED",
                                                    params: .with { $0.instanceReplace = .with { $0.sourceInstance = "i0"; $0.targetInstance = "i0" } })
            _ = try await control.withConnection(logger: logger) { connection in
                try await connection.execute("""
                    INSERT INTO instance_replace_results (root_job_id, tenant, status, job_id, error_message, started_at, finished_at)
                    VALUES (\(replace), 'alpha', 'SUCCEEDED', \(replace), NULL, now(), now()), (\(replace), 'beta', 'FAILED', \(replace), 'boom', now(), now())
                    """, logger: logger)
                try await connection.execute("UPDATE jobs SET resume_state = '{\"tenantsDone\": [\"alpha\"]}' WHERE id = \(replace)", logger: logger)
            }
            try await ControlRows.events(control, job: replace, count: 3, ago: "0 seconds")
            let export = try await ControlRows.job(control, kind: "export", status: "SUCCEEDED")
            let expiring = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "7 days")
            try store.folder(expiring, manifestJob: export)
            let longLived = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "400 days")
            try store.folder(longLived, manifestJob: export)

            // Ten months later.
            _ = try await control.withConnection(logger: logger) { connection in
                for statement in [
                    "UPDATE jobs SET created_at = created_at - interval '10 months', queued_at = queued_at - interval '10 months', started_at = started_at - interval '10 months', finished_at = finished_at - interval '10 months', heartbeat_at = heartbeat_at - interval '10 months', updated_at = updated_at - interval '10 months'",
                    "UPDATE job_events SET created_at = created_at - interval '10 months'",
                    "UPDATE job_tables SET updated_at = updated_at - interval '10 months'",
                    "UPDATE tenant_claims SET created_at = created_at - interval '10 months'",
                    "UPDATE instance_replace_results SET started_at = started_at - interval '10 months', finished_at = finished_at - interval '10 months'",
                    "UPDATE instances SET created_at = created_at - interval '10 months', updated_at = updated_at - interval '10 months'",
                    "UPDATE job_artifacts SET created_at = created_at - interval '10 months', expires_at = expires_at - interval '10 months'",
                ] {
                    try await connection.execute(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
            }

            let kept = ["jobs", "job_instances", "job_tables", "instance_replace_results", "tenant_claims", "instances"]
            func snapshot() async throws -> [String: String] {
                var result: [String: String] = [:]
                for table in kept {
                    let count = try await scalar(control, "SELECT count(*)::int FROM \(table)")
                    let digest = try await control.withConnection(logger: logger) { connection in
                        try await connection.execute(PostgresQuery(unsafeSQL: "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM \(table) t"), logger: logger)
                            .first!.decode(String.self)
                    }
                    result[table] = "\(count) rows, md5 \(digest)"
                }
                return result
            }
            let before = try await snapshot()
            #expect(try await scalar(control, "SELECT count(*)::int FROM job_tables") > 0, "the engine left checkpoints: \(before)")
            #expect(try await scalar(control, "SELECT count(*)::int FROM tenant_claims") == 1, "\(before)")
            #expect(try await scalar(control, "SELECT count(*)::int FROM jobs WHERE rerun_of IS NOT NULL") == 1, "\(before)")
            // Every job has finished; all but the hand-made export have events.
            #expect(try await scalar(control, "SELECT count(*)::int FROM jobs WHERE finished_at IS NULL") == 0)
            let finishedJobs = try await scalar(control, "SELECT count(*)::int FROM jobs j WHERE EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = j.id)")
            let eventsBefore = try await scalar(control, "SELECT count(*)::int FROM job_events")
            #expect(eventsBefore > finishedJobs)

            let (result, summary) = try await sweep(control, store)
            #expect(result.status == 0 && count(summary, "failures") == 0, "\(result.output)")
            #expect(count(summary, "artifactsDeleted") == 1, "\(summary)")
            #expect(count(summary, "eventsDeleted") == eventsBefore - finishedJobs, "\(summary)")

            let after = try await snapshot()
            #expect(after == before, "the sweep changed rows it must never touch")
            // Each finished job keeps its last event; only the expired artifact went.
            #expect(try await scalar(control, "SELECT count(*)::int FROM job_events e JOIN jobs j ON j.id = e.job_id AND e.seq = j.last_seq") == finishedJobs)
            #expect(try await scalar(control, "SELECT count(*)::int FROM job_events") == finishedJobs)
            #expect(try await rowExists(control, expiring) == false)
            #expect(!store.exists(expiring))
            #expect(try await rowExists(control, longLived))
            #expect(store.exists(longLived))

            // A watch of a swept job still ends: its last event (the terminal STATUS) is there.
            for job in [writing, failing, plain, rerun] {
                var seen: [(JobEventType, Int64)] = []
                for try await event in try client.serverStream(FerryMethods.watchJob, .with { $0.jobID = job.id }, timeout: .seconds(20)) {
                    seen.append((event.type, event.seq))
                }
                let lastSeq = try await scalar(control, "SELECT last_seq::int FROM jobs WHERE id = '\(job.id)'")
                #expect(seen.map(\.0) == [.snapshot, .status] && seen.last?.1 == Int64(lastSeq), "\(job.id): \(seen)")
            }
        }
    }

    // MARK: One sweep at a time

    @Test func twoSweepsNeverRunAtOnce() async throws {
        let control = try await migratedControl()
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        let environment = ["FERRY_LOG_LEVEL": "warning", "FERRY_TEST_RETENTION_HOLD_MS": "1500"]

        // Both wait for the lease: the second sweeps after the first, never beside it.
        let waiting = try await runTogether([sweepCommand(control, store), sweepCommand(control, store)], environment: environment)
        #expect(waiting.allSatisfy { $0.status == 0 }, "\(waiting.map(\.output))")
        let intervals = try waiting.map { result -> (Date, Date) in
            let summary = Self.summary(result)
            let parse = { (key: String) throws -> Date in
                let formatter = ISO8601DateFormatter()
                formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
                return try #require((summary[key] as? String).flatMap { formatter.date(from: $0) }, "\(key) in \(result.output)")
            }
            return (try parse("startedAt"), try parse("finishedAt"))
        }.sorted { $0.0 < $1.0 }
        #expect(intervals.count == 2)
        if intervals.count == 2 {
            #expect(intervals[0].1 <= intervals[1].0, "the sweeps overlapped: \(intervals)")
            #expect(intervals[0].1.timeIntervalSince(intervals[0].0) >= 1.4, "the hold did not stretch the sweep: \(intervals)")
        }

        // Told not to wait, the one that finds the lease taken says so and sweeps nothing.
        let impatient = try await runTogether([sweepCommand(control, store, ["--lease-wait", "0"]), sweepCommand(control, store, ["--lease-wait", "0"])],
                                              environment: environment)
        #expect(impatient.map(\.status).sorted() == [0, 1], "\(impatient.map(\.output))")
        let loser = impatient.first { $0.status == 1 }
        #expect(loser?.output.contains("ferryd: error: the retention lease is held by ferryd-sweep:") == true, "\(loser?.output ?? "")")
        #expect(loser?.output.contains("gave up after 0 s (--lease-wait)") == true, "\(loser?.output ?? "")")
    }

    @Test func servingReplicasSweepOnScheduleOneAtATime() async throws {
        let store = try TestArtifactStore.make()
        defer { store.remove() }
        try await Replicas.with(count: 2, instances: 0, arguments: ["--artifact-dir", store.directory, "--retention-interval", "1"]) { replicas in
            let control = replicas.control
            let export = try await ControlRows.job(control, kind: "export", status: "SUCCEEDED")
            var expired: [UUID] = []
            for _ in 0..<3 {
                let id = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "-1 second")
                try store.folder(id, manifestJob: export)
                expired.append(id)
            }
            let kept = try await ControlRows.artifact(control, job: export, storeID: store.storeID, expiresIn: "1 hour")
            try store.folder(kept, manifestJob: export)

            let deadline = ContinuousClock.now + .seconds(30)
            while try await ControlRows.artifactCount(control) > 1, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(try await ControlRows.artifactCount(control) == 1)
            #expect(expired.allSatisfy { !store.exists($0) } && store.exists(kept))
            // The lease names one of the two replicas.
            let owner = try await control.withConnection(logger: logger) {
                try await $0.execute("SELECT owner FROM leases WHERE name = 'retention'", logger: logger).first?.decode(String.self)
            }
            #expect(owner.flatMap { replicas.index(ofOwner: $0) } != nil, "\(owner ?? "no lease row")")
            // And an expiry set later is swept later, by whichever replica is due.
            _ = try await control.withConnection(logger: logger) {
                try await $0.execute("UPDATE job_artifacts SET expires_at = now() WHERE id = \(kept)", logger: logger)
            }
            while try await ControlRows.artifactCount(control) > 0, ContinuousClock.now < deadline + .seconds(30) {
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(try await ControlRows.artifactCount(control) == 0)
            #expect(!store.exists(kept))
        }
    }
}
