import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryRuntime
import FerryTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// The clone kind end to end: real replicas (`ferryd-test` running the real clone), real
/// source and target instances (two databases of one cluster, and a database of a second
/// cluster), checked from outside Ferry with pg_dump and sorted row text.
@Suite(.serialized) struct CloneTests: TenantJobTest {
    static let kinds = ["FERRY_TEST_KINDS": "realclone"]

    private func request(_ source: (String, String), _ target: (String, String), copyWidth: UInt32 = 0, indexWidth: UInt32 = 0, split: Int64 = 0) -> StartJobRequest {
        var request = StartJobRequest()
        request.clone = .clone(from: source.0, source.1, to: target.0, target.1)
        request.clone.copyWidth = copyWidth
        request.clone.indexWidth = indexWidth
        request.clone.splitTableBytes = split
        return request
    }

    // MARK: Every supported object, same instance under a new name and to another cluster

    @Test func aCloneRecreatesEveryObjectAndRowAndLeavesTheSourceUntouched() async throws {
        try await Replicas.with(count: 1, instances: 1, environments: [Self.kinds]) { replicas in
            let source = replicas.instances["i0"]!
            let far = try await registerFarInstance(replicas)
            try await run(source, TenantFixture.sql(schema: "fixture"))
            let sourceData = try await TenantInspection.data(source, schema: "fixture")
            let sourceSchema = try await TenantInspection.schemaDump(source, schema: "fixture")
            let before = try await TenantInspection.writes(source, schema: "fixture")
            #expect(sourceData.count >= 5, "the fixture holds too few tables: \(sourceData.keys.sorted())")

            let client = try await replicas.client(0)
            defer { client.close() }
            // (a) Same instance, new name; small split size, so a table is copied in ranges.
            let local = try await client.startJob(request(("i0", "fixture"), ("i0", "fixture_copy"), split: 8192))
            // (b) Another cluster, same name.
            let remote = try await client.startJob(request(("i0", "fixture"), ("far", "fixture")))
            for (job, target, schema) in [(local, source, "fixture_copy"), (remote, far, "fixture")] {
                let done = try await client.waitFor(job.id, timeout: .seconds(120)) { $0.status.isTerminal }
                #expect(done.status == .succeeded, "\(done.error)")
                let targetSchema = try await TenantInspection.schemaDump(target, schema: schema)
                #expect(targetSchema == sourceSchema, "pg_dump differs: \(TenantInspection.difference(sourceSchema, targetSchema))")
                #expect(try await TenantInspection.data(target, schema: schema) == sourceData)
                // The job's result lists every table with the row count the source has.
                let counted = Dictionary(uniqueKeysWithValues: done.result.tables.map { ($0.table, "\($0.rows)") })
                #expect(counted == sourceData.mapValues { String($0.prefix { $0 != ":" }) })
                #expect(done.progress.tablesDone == Int64(sourceData.count) && done.progress.phase == "done")
            }

            // Sequences continue on the targets where the source stands.
            let sequences = try await source.withConnection(logger: logger) { connection in
                try await connection.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'fixture' ORDER BY 1", logger: logger)
                    .map { try $0.decode(String.self) }
            }
            #expect(!sequences.isEmpty)
            // Nothing was written to the source: no rows, no objects (checked before this
            // test's own nextval calls below).
            try await Task.sleep(for: .milliseconds(800))
            let after = try await TenantInspection.writes(source, schema: "fixture")
            #expect(after.tupleWrites == before.tupleWrites && after.objects == before.objects, "source written: \(before) → \(after)")
            #expect(try await TenantInspection.data(source, schema: "fixture") == sourceData)
            for sequence in sequences {
                let name = "\"" + sequence.replacingOccurrences(of: "\"", with: "\"\"") + "\""
                let next = { (schema: String) in "SELECT nextval('\"\(schema)\".\(name.replacingOccurrences(of: "'", with: "''"))')::text" }
                let expected: String = try await scalar(source, next("fixture"))
                #expect(try await scalar(source, next("fixture_copy")) as String == expected, "\(sequence)")
                #expect(try await scalar(far, next("fixture")) as String == expected, "\(sequence)")
            }
        }
    }

    /// The text format, as between servers of different major versions, gives the same copy.
    @Test func aTextFormatCloneGivesTheSameCopy() async throws {
        try await Replicas.with(count: 1, instances: 2, environments: [Self.kinds.merging(["FERRY_TEST_CLONE_TEXT": "1"]) { $1 }]) { replicas in
            let source = replicas.instances["i0"]!
            try await run(source, TenantFixture.sql(schema: "fixture"))
            let client = try await replicas.client(0)
            defer { client.close() }
            let job = try await client.startJob(request(("i0", "fixture"), ("i1", "fixture")))
            let done = try await client.waitFor(job.id, timeout: .seconds(120)) { $0.status.isTerminal }
            #expect(done.status == .succeeded, "\(done.error)")
            #expect(try await TenantInspection.data(replicas.instances["i1"]!, schema: "fixture") == TenantInspection.data(source, schema: "fixture"))
        }
    }

    // MARK: One snapshot

    /// The source is written throughout the clone, each transaction adding the same id to two
    /// tables copied at different times: the copy holds the same ids in both, and they are
    /// exactly the source's as of one instant (a prefix of the ids the writer committed).
    @Test func theCopyIsOneInstantOfASourceBeingWritten() async throws {
        try await Replicas.with(count: 1, instances: 2, environments: [Self.kinds]) { replicas in
            let source = replicas.instances["i0"]!
            try await run(source, """
                CREATE SCHEMA busy;
                CREATE TABLE busy.big (id bigint PRIMARY KEY, pad text NOT NULL);
                CREATE TABLE busy.ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
                CREATE TABLE busy.mirror (id bigint PRIMARY KEY);
                INSERT INTO busy.big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 150000) g;
                INSERT INTO busy.ledger (id) SELECT g FROM generate_series(1, 1000) g;
                INSERT INTO busy.mirror SELECT g FROM generate_series(1, 1000) g;
                """)
            let stop = Mutex(false)
            let writing = Task {
                try await source.withConnection(logger: logger) { connection in
                    var id: Int64 = 1000
                    while !stop.withLock({ $0 }) {
                        id += 1
                        try await connection.execute("BEGIN", logger: logger)
                        try await connection.execute("INSERT INTO busy.ledger (id) VALUES (\(id))", logger: logger)
                        try await connection.execute("INSERT INTO busy.mirror (id) VALUES (\(id))", logger: logger)
                        try await connection.execute("UPDATE busy.big SET pad = 'changed' WHERE id = \(id)", logger: logger)
                        try await connection.execute("COMMIT", logger: logger)
                        try? await Task.sleep(for: .milliseconds(2))
                    }
                    return id
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            let client = try await replicas.client(0)
            defer { client.close() }
            // One table at a time, so the tables are read at different moments.
            let job = try await client.startJob(request(("i0", "busy"), ("i1", "busy"), copyWidth: 1, indexWidth: 1))
            let done = try await client.waitFor(job.id, timeout: .seconds(120)) { $0.status.isTerminal }
            stop.withLock { $0 = true }
            let lastWritten = try await writing.value
            #expect(done.status == .succeeded, "\(done.error)")
            let target = replicas.instances["i1"]!
            let ledger: Int64 = try await scalar(target, "SELECT max(id) FROM busy.ledger")
            #expect(ledger > 1000 && ledger < lastWritten, "the copy is not of an instant during the writes: \(ledger) of \(lastWritten)")
            #expect(try await scalar(target, "SELECT count(*) FROM busy.ledger") as Int64 == ledger)
            #expect(try await scalar(target, "SELECT count(*) FROM busy.mirror") as Int64 == ledger)
            #expect(try await scalar(target, "SELECT max(id) FROM busy.mirror") as Int64 == ledger)
            // `big` shows exactly the updates of the transactions the ledger shows.
            #expect(try await scalar(target, "SELECT count(*) FROM busy.big WHERE pad = 'changed'") as Int64 == ledger - 1000)
            #expect(try await scalar(target, "SELECT max(id) FROM busy.big WHERE pad = 'changed'") as Int64 == ledger)
        }
    }

    // MARK: Refusals and collisions

    @Test func aTenantWithObjectsFerryCannotCopyIsRefusedAtStartJobNamingEach() async throws {
        try await Replicas.with(count: 1, instances: 1, environments: [Self.kinds]) { replicas in
            try await run(replicas.instances["i0"]!, """
                CREATE SCHEMA odd;
                CREATE TABLE odd.t (id int PRIMARY KEY, v text);
                CREATE FUNCTION odd.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
                CREATE TRIGGER touching BEFORE INSERT ON odd.t FOR EACH ROW EXECUTE FUNCTION odd.touch();
                CREATE MATERIALIZED VIEW odd.mv AS SELECT id FROM odd.t;
                """)
            let client = try await replicas.client(0)
            defer { client.close() }
            do {
                _ = try await client.startJob(request(("i0", "odd"), ("i0", "odd_copy")))
                Issue.record("a tenant with a function, a trigger and a materialized view was admitted")
            } catch let error as RPCError {
                #expect(error.code == .failedPrecondition, "\(error)")
                for name in ["touch", "touching", "mv"] { #expect(error.message.contains(name), "\(name) is not named: \(error.message)") }
            }
            #expect(try await replicas.query { try await $0.execute("SELECT count(*)::int FROM jobs", logger: logger).first!.decode(Int.self) } == 0)
            #expect(try await scalar(replicas.instances["i0"]!, "SELECT count(*)::int FROM pg_namespace WHERE nspname = 'odd_copy'") as Int == 0)
        }
    }

    @Test func aForeignTargetIsAlreadyExistsAndNothingIsWritten() async throws {
        try await Replicas.with(count: 1, instances: 1, environments: [Self.kinds]) { replicas in
            let instance = replicas.instances["i0"]!
            try await run(instance, "CREATE SCHEMA src; CREATE TABLE src.t (id int); CREATE SCHEMA theirs; CREATE TABLE theirs.keep (id int); INSERT INTO theirs.keep VALUES (7);")
            let client = try await replicas.client(0)
            defer { client.close() }
            let code = await statusCode { _ = try await client.startJob(request(("i0", "src"), ("i0", "theirs"))) }
            #expect(code == .alreadyExists)
            #expect(try await scalar(instance, "SELECT count(*)::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'theirs'") as Int == 1)
            #expect(try await scalar(instance, "SELECT sum(id)::int FROM theirs.keep") as Int == 7)
        }
    }

    /// A target that appears between the plan and the run (the job waited in the queue) fails
    /// the job ALREADY_EXISTS, and the claim the run had just made is given back: a rerun is
    /// refused at RerunJob instead of resuming into (dropping tables of) the foreign schema.
    @Test func aTargetThatAppearsWhileTheJobIsQueuedIsNeverResumedInto() async throws {
        // The first clone holds the instance's only running slot for a few seconds.
        let slow = ["FERRY_TEST_CLONE_BEFORE_VERIFY": "first.t:SELECT pg_sleep(4)"]
        try await Replicas.with(count: 1, instances: 1, arguments: ["--max-running-per-instance", "1"],
                                environments: [Self.kinds.merging(slow) { $1 }]) { replicas in
            let instance = replicas.instances["i0"]!
            try await run(instance, "CREATE SCHEMA src; CREATE TABLE src.t (id int); INSERT INTO src.t VALUES (1), (2);")
            let client = try await replicas.client(0)
            defer { client.close() }
            let first = try await client.startJob(request(("i0", "src"), ("i0", "first")))
            var queued = request(("i0", "src"), ("i0", "late"))
            queued.queue = true
            let late = try await client.startJob(queued)
            #expect(late.status == .queued)
            try await run(instance, "CREATE SCHEMA late; CREATE TABLE late.t (id int); INSERT INTO late.t VALUES (7);")
            _ = try await client.waitFor(first.id, timeout: .seconds(60)) { $0.status.isTerminal }
            let failed = try await client.waitFor(late.id, timeout: .seconds(60)) { $0.status.isTerminal }
            #expect(failed.status == .failed && failed.error.code == "ALREADY_EXISTS", "\(failed)")
            let claims: Int = try await replicas.query {
                try await $0.execute("SELECT count(*)::int FROM tenant_claims WHERE tenant = 'late'", logger: logger).first!.decode(Int.self)
            }
            #expect(claims == 0)
            #expect(await statusCode { _ = try await client.rerun(late.id) } == .alreadyExists)
            #expect(try await scalar(instance, "SELECT string_agg(id::text, ',') FROM late.t") as String == "7")
        }
    }

    // MARK: Verification

    @Test func aTargetRowChangedBeforeVerificationFailsTheJobWithDataLossNamingTheTable() async throws {
        let tamper = ["FERRY_TEST_CLONE_BEFORE_VERIFY": "orders:UPDATE {schema}.orders SET note = note || '!' WHERE id = 3"]
        try await Replicas.with(count: 1, instances: 2, environments: [Self.kinds.merging(tamper) { $1 }]) { replicas in
            try await run(replicas.instances["i0"]!, """
                CREATE SCHEMA shop;
                CREATE TABLE shop.customers (id int PRIMARY KEY, name text);
                CREATE TABLE shop.orders (id int PRIMARY KEY, note text NOT NULL);
                INSERT INTO shop.customers SELECT g, 'c' || g FROM generate_series(1, 50) g;
                INSERT INTO shop.orders SELECT g, 'o' || g FROM generate_series(1, 50) g;
                """)
            let client = try await replicas.client(0)
            defer { client.close() }
            let job = try await client.startJob(request(("i0", "shop"), ("i1", "shop")))
            let done = try await client.waitFor(job.id, timeout: .seconds(60)) { $0.status.isTerminal }
            #expect(done.status == .failed)
            #expect(done.error.code == "DATA_LOSS" && done.error.message.contains("orders"), "\(done.error)")
            #expect(!done.error.message.contains("customers"))
            let verified = try await replicas.query {
                try await $0.execute("SELECT table_name FROM job_tables WHERE status = 'VERIFIED' ORDER BY 1", logger: logger).map { try $0.decode(String.self) }
            }
            #expect(!verified.contains("orders"))
        }
    }

    // MARK: Resume

    /// The replica is killed while one table is still unverified (held before its checksum,
    /// in attempt 1 only) and the others are verified. The rerun, on the other replica, leaves
    /// the verified tables alone — their rows keep the transaction ids of the first attempt's
    /// load — redoes the other from zero, and ends with the source's data.
    @Test func aRerunAfterAKillSkipsVerifiedTablesAndRedoesTheRest() async throws {
        try await Replicas.with(count: 2, instances: 2, environments: [HeldTenant.hold, HeldTenant.hold]) { replicas in
            let source = replicas.instances["i0"]!
            let target = replicas.instances["i1"]!
            try await run(source, HeldTenant.script)
            let starter = try await replicas.client(0)
            let job = try await starter.startJob(request(("i0", "app"), ("i1", "app"), copyWidth: 2, indexWidth: 2))
            starter.close()
            try await HeldTenant.waitForVerifiedFirst(replicas)
            let verified = HeldTenant.verifiedFirst
            let xmins = "SELECT string_agg(DISTINCT xmin::text, ',') FROM app."
            var firstLoad: [String: String] = [:]
            for table in verified { firstLoad[table] = try await scalar(target, xmins + table) }
            let killed = try await runningReplica(of: job, replicas)
            replicas.servers[killed].process.child.signal(SIGKILL)

            // The leader fails the dead replica's job (retryably); the rerun runs on the other.
            let client = try await replicas.client(1 - killed)
            defer { client.close() }
            let done = try await rerunAfterTheLeaderFails(job, client)
            #expect(done.status == .succeeded, "\(done.error)")
            for table in verified {
                #expect(try await scalar(target, xmins + table) as String == firstLoad[table], "table \(table) was copied again")
            }
            #expect(try await TenantInspection.data(target, schema: "app") == TenantInspection.data(source, schema: "app"))
            #expect(done.result.tables.map(\.table) == ["a", "b", "c", "slow"])
        }
    }

    /// The replica copying a large table is frozen (SIGSTOP) in the middle of its COPY; the
    /// leader fails the job and the rerun, on the other replica, takes the target's fence,
    /// which ends the frozen attempt's sessions there, and copies again. Thawed, the frozen
    /// replica finds its libpq sessions gone and writes nothing more: the target ends with
    /// exactly the source's rows, none twice.
    @Test func aFrozenReplicaWritesNothingAfterTheRerunTookTheTarget() async throws {
        try await Replicas.with(count: 2, instances: 2, environments: [Self.kinds, Self.kinds]) { replicas in
            let source = replicas.instances["i0"]!
            let target = replicas.instances["i1"]!
            try await run(source, """
                CREATE SCHEMA heavy;
                CREATE TABLE heavy.t (id bigint PRIMARY KEY, pad text);
                INSERT INTO heavy.t SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 400000) g;
                """)
            let starter = try await replicas.client(0)
            let job = try await starter.startJob(request(("i0", "heavy"), ("i1", "heavy"), copyWidth: 1))
            _ = try await starter.waitFor(job.id) { $0.progress.bytesCopied > 0 }
            starter.close()
            let frozen = try await runningReplica(of: job, replicas)
            replicas.servers[frozen].process.child.signal(SIGSTOP)
            var thawed = false
            defer { if !thawed { replicas.servers[frozen].process.child.signal(SIGCONT) } }

            let client = try await replicas.client(1 - frozen)
            defer { client.close() }
            let done = try await rerunAfterTheLeaderFails(job, client)
            #expect(done.status == .succeeded, "\(done.error)")
            let attemptOne = "SELECT count(*)::int FROM pg_stat_activity WHERE application_name = 'ferry \(job.rootJobID) 1'"
            #expect(try await scalar(target, attemptOne) as Int == 0, "the frozen attempt still has sessions on the target")

            replicas.servers[frozen].process.child.signal(SIGCONT)
            thawed = true
            try await Task.sleep(for: .seconds(3))
            #expect(try await scalar(target, attemptOne) as Int == 0, "the thawed attempt opened a session on the target")
            #expect(try await scalar(target, "SELECT count(*) FROM heavy.t") as Int64 == 400000)
            #expect(try await TenantInspection.data(target, schema: "heavy") == TenantInspection.data(source, schema: "heavy"))
        }
    }

    // MARK: Cancel

    /// Cancel stops the COPY statements on both servers within seconds; the partial target and
    /// its claim stay for a rerun.
    @Test func cancelStopsTheCopyOnBothServersAndKeepsThePartialTarget() async throws {
        try await Replicas.with(count: 1, instances: 2, environments: [Self.kinds]) { replicas in
            let source = replicas.instances["i0"]!
            let target = replicas.instances["i1"]!
            try await run(source, """
                CREATE SCHEMA heavy;
                CREATE TABLE heavy.t (id bigint, pad text);
                INSERT INTO heavy.t SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 400000) g;
                """)
            let client = try await replicas.client(0)
            defer { client.close() }
            let job = try await client.startJob(request(("i0", "heavy"), ("i1", "heavy"), copyWidth: 1))
            _ = try await client.waitFor(job.id) { $0.progress.bytesCopied > 0 }
            let root = job.rootJobID
            _ = try await client.cancel(job.id)
            let ended = ContinuousClock.now
            let done = try await client.waitFor(job.id) { $0.status.isTerminal }
            #expect(done.status == .cancelled)
            let sessions = "SELECT count(*)::int FROM pg_stat_activity WHERE application_name LIKE 'ferry \(root) %'"
            var left = (try await scalar(source, sessions) as Int, try await scalar(target, sessions) as Int)
            while left != (0, 0) && ContinuousClock.now < ended + .seconds(10) {
                try await Task.sleep(for: .milliseconds(100))
                left = (try await scalar(source, sessions) as Int, try await scalar(target, sessions) as Int)
            }
            #expect(left == (0, 0), "the job's sessions outlived the cancel by 10 s: \(left)")
            #expect(try await scalar(target, "SELECT count(*)::int FROM pg_namespace WHERE nspname = 'heavy'") as Int == 1)
            let claim = try await replicas.query {
                try await $0.execute("SELECT root_job_id FROM tenant_claims WHERE instance_id = 'i1' AND tenant = 'heavy'", logger: logger).first?.decode(UUID.self)
            }
            #expect(claim == UUID(uuidString: root))
            let rerun = try await client.rerun(job.id)
            let finished = try await client.waitFor(rerun.id, timeout: .seconds(120)) { $0.status.isTerminal }
            #expect(finished.status == .succeeded, "\(finished.error)")
            #expect(try await scalar(target, "SELECT count(*) FROM heavy.t") as Int64 == 400000)
        }
    }
}
