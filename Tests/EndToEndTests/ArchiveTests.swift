import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import PostgresNIO
import Testing

/// The export and import kinds end to end: real replicas, a real artifact directory, real
/// source and target instances (and a second cluster), archives checked from outside Ferry
/// and damaged on disk the ways a disk, a copy or a person damages them.
@Suite(.serialized) struct ArchiveTests: TenantJobTest {
    static let kinds = ["FERRY_TEST_KINDS": "realexport,realimport"]

    /// Runs `body` with replicas whose artifact store is a fresh directory.
    private func withReplicas(count: Int = 1, environment: [String: String] = [:], _ body: (Replicas, String) async throws -> Void) async throws {
        let store = FileManager.default.temporaryDirectory.path + "/ferry-artifacts-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: store) }
        try await Replicas.with(count: count, instances: 2, arguments: ["--artifact-dir", store],
                                environments: Array(repeating: Self.kinds.merging(environment) { $1 }, count: count)) { replicas in
            try await body(replicas, store)
        }
    }

    private func export(_ instance: String, _ tenant: String, split: Int64 = 0, ttl: Int64 = 0) -> StartJobRequest {
        var request = StartJobRequest()
        request.export = .with {
            $0.sourceInstance = instance
            $0.sourceTenant = tenant
            $0.splitTableBytes = split
            $0.ttlSeconds = ttl
        }
        return request
    }

    private func importing(_ artifact: String, into instance: String, _ tenant: String) -> StartJobRequest {
        var request = StartJobRequest()
        request.import = .with {
            $0.artifactID = artifact
            $0.targetInstance = instance
            $0.targetTenant = tenant
        }
        return request
    }

    /// Exports `tenant` of i0 and returns the finished job.
    private func exported(_ client: FerryConnection, _ tenant: String = "fixture", split: Int64 = 0) async throws -> Job {
        let job = try await client.startJob(export("i0", tenant, split: split))
        let done = try await client.waitFor(job.id, timeout: .seconds(120)) { $0.status.isTerminal }
        try #require(done.status == .succeeded, "\(done.error)")
        try #require(!done.result.artifactID.isEmpty)
        return done
    }

    private func tenantExists(_ url: DatabaseURL, _ tenant: String) async throws -> Bool {
        try await scalar(url, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '\(tenant)')")
    }

    // MARK: Round trip

    /// Export, then import into the same instance under a new name and into another cluster
    /// under the same name: identical schema and data, the source untouched, the artifact
    /// listed with its size, rows and expiry, its folder holding a manifest and zstd files.
    @Test func anExportImportsBackIdenticallyHereAndOnAnotherCluster() async throws {
        try await withReplicas { replicas, store in
            let source = replicas.instances["i0"]!
            let far = try await registerFarInstance(replicas)
            try await run(source, TenantFixture.sql(schema: "fixture"))
            let sourceData = try await TenantInspection.data(source, schema: "fixture")
            let sourceSchema = try await TenantInspection.schemaDump(source, schema: "fixture")
            let before = try await TenantInspection.writes(source, schema: "fixture")
            let client = try await replicas.client(0)
            defer { client.close() }

            // A small split size: the larger tables are written as several files.
            let done = try await exported(client, split: 8192)
            let artifactID = done.result.artifactID
            let counted = Dictionary(uniqueKeysWithValues: done.result.tables.map { ($0.table, "\($0.rows)") })
            #expect(counted == sourceData.mapValues { String($0.prefix { $0 != ":" }) })
            let artifact = try await client.unary(FerryMethods.getArtifact, .with { $0.artifactID = artifactID })
            #expect(artifact.sourceInstance == "i0" && artifact.sourceTenant == "fixture" && artifact.jobID == done.id)
            #expect(artifact.tables == Int64(sourceData.count) && artifact.rows == done.result.tables.reduce(0) { $0 + $1.rows })
            #expect(artifact.sizeBytes > 0 && artifact.formatVersion == 1)
            // Seven days by default, by the database clock.
            let days = artifact.expiresAt.date.timeIntervalSince(artifact.createdAt.date) / 86400
            #expect(abs(days - 7) < 0.01, "\(days) days")

            // On disk: the manifest and the data files, every one a zstd frame (magic
            // 28 b5 2f fd), and the folder's bytes add up to the artifact's size.
            let folder = store + "/" + artifactID
            let files = try FileManager.default.contentsOfDirectory(atPath: folder + "/data").sorted()
            let tablesSplit = Set(files.map { $0.prefix(5) }).count
            #expect(files.count > tablesSplit, "no table was split into several files: \(files)")
            var total = try FileManager.default.attributesOfItem(atPath: folder + "/manifest.json")[.size] as! Int
            for file in files {
                let data = try Data(contentsOf: URL(fileURLWithPath: folder + "/data/" + file))
                #expect(Array(data.prefix(4)) == [0x28, 0xb5, 0x2f, 0xfd], "\(file) is not zstd")
                total += data.count
            }
            #expect(Int64(total) == artifact.sizeBytes)

            for (instance, url, tenant) in [("i0", source, "fixture_back"), ("far", far, "fixture")] {
                let job = try await client.startJob(importing(artifactID, into: instance, tenant))
                let imported = try await client.waitFor(job.id, timeout: .seconds(120)) { $0.status.isTerminal }
                #expect(imported.status == .succeeded, "\(imported.error)")
                let schema = try await TenantInspection.schemaDump(url, schema: tenant)
                #expect(schema == sourceSchema, "pg_dump differs: \(TenantInspection.difference(sourceSchema, schema))")
                #expect(try await TenantInspection.data(url, schema: tenant) == sourceData)
                // The import verified every table against the export's own figures.
                #expect(imported.result.tables.map { "\($0.table):\($0.rows):\($0.checksum)" }
                            == done.result.tables.map { "\($0.table):\($0.rows):\($0.checksum)" })
            }
            let after = try await TenantInspection.writes(source, schema: "fixture")
            #expect(after.tupleWrites == before.tupleWrites && after.objects == before.objects, "source written: \(before) → \(after)")
        }
    }

    // MARK: Damaged archives

    /// Each damage is refused — at StartJob when the manifest shows it, else by the job before
    /// it writes — with DATA_LOSS or INVALID_ARGUMENT, and the target never gets the tenant.
    @Test func aDamagedArchiveIsRefusedAndWritesNothing() async throws {
        try await withReplicas { replicas, store in
            let source = replicas.instances["i0"]!
            let target = replicas.instances["i1"]!
            try await run(source, TenantFixture.sql(schema: "fixture"))
            let client = try await replicas.client(0)
            defer { client.close() }

            /// Rewrites a manifest and records its new checksum, as a writer that recorded
            /// what it wrote would: the damage is then the manifest's content itself.
            func rewriteManifest(_ artifact: String, _ change: (inout [String: Any]) -> Void) async throws {
                let path = store + "/" + artifact + "/manifest.json"
                var manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
                change(&manifest)
                let data = try JSONSerialization.data(withJSONObject: manifest)
                try data.write(to: URL(fileURLWithPath: path))
                try await record(data, artifact)
            }
            /// Records `data` as the artifact's manifest checksum (SHA-256 by the control database).
            func record(_ data: Data, _ artifact: String) async throws {
                let hex = data.map { String(format: "%02x", $0) }.joined()
                try await replicas.query { connection in
                    try await connection.execute("""
                        UPDATE job_artifacts SET sha256 = encode(sha256(decode(\(hex), 'hex')), 'hex') WHERE id = \(UUID(uuidString: artifact)!)
                        """, logger: logger)
                }
            }
            func renameFirstFile(_ artifact: String, to name: String) async throws {
                try await rewriteManifest(artifact) { manifest in
                    var tables = manifest["tables"] as! [[String: Any]]
                    var files = tables[0]["files"] as! [[String: Any]]
                    files[0]["path"] = name
                    tables[0]["files"] = files
                    manifest["tables"] = tables
                }
            }
            func largestFile(_ artifact: String) throws -> String {
                let folder = store + "/" + artifact + "/data/"
                return folder + (try FileManager.default.contentsOfDirectory(atPath: folder).max {
                    (try FileManager.default.attributesOfItem(atPath: folder + $0)[.size] as! Int) < (try FileManager.default.attributesOfItem(atPath: folder + $1)[.size] as! Int)
                }!)
            }

            typealias Damage = (name: String, expected: StatusCode, atStart: Bool, damage: (String) async throws -> Void)
            let damages: [Damage] = [
                ("a flipped byte in a data file", .dataLoss, false, { artifact in
                    let path = try largestFile(artifact)
                    var data = try Data(contentsOf: URL(fileURLWithPath: path))
                    data[data.count / 2] ^= 0x40
                    try data.write(to: URL(fileURLWithPath: path))
                }),
                ("a truncated data file", .dataLoss, false, { artifact in
                    let path = try largestFile(artifact)
                    let data = try Data(contentsOf: URL(fileURLWithPath: path))
                    try data.prefix(data.count - 7).write(to: URL(fileURLWithPath: path))
                }),
                ("a missing data file", .dataLoss, false, { artifact in
                    try FileManager.default.removeItem(atPath: try largestFile(artifact))
                }),
                ("a data file replaced by a symbolic link", .dataLoss, false, { artifact in
                    let path = try largestFile(artifact)
                    try FileManager.default.removeItem(atPath: path)
                    try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: "/etc/hostname")
                }),
                ("a manifest edited after the export", .dataLoss, true, { artifact in
                    let path = store + "/" + artifact + "/manifest.json"
                    var data = try Data(contentsOf: URL(fileURLWithPath: path))
                    data.append(contentsOf: Array(" ".utf8))
                    try data.write(to: URL(fileURLWithPath: path))
                }),
                ("a manifest naming ../x", .invalidArgument, true, { try await renameFirstFile($0, to: "../x") }),
                ("a manifest naming data/../../x", .invalidArgument, true, { try await renameFirstFile($0, to: "data/../../x") }),
                ("a manifest naming an absolute path", .invalidArgument, true, { try await renameFirstFile($0, to: "/etc/passwd") }),
                // A "/" followed by a combining accent is one Swift character, but a "/" to the kernel.
                ("a manifest naming data/a/\u{301}b", .invalidArgument, true, { try await renameFirstFile($0, to: "data/a/\u{301}b") }),
                ("a manifest of an unknown format version", .invalidArgument, true, { artifact in
                    try await rewriteManifest(artifact) { $0["formatVersion"] = 99 }
                }),
                ("a manifest that is not JSON", .invalidArgument, true, { artifact in
                    let path = store + "/" + artifact + "/manifest.json"
                    let data = Data("{\"format\": ".utf8)
                    try data.write(to: URL(fileURLWithPath: path))
                    try await record(data, artifact)
                }),
            ]
            for (index, damage) in damages.enumerated() {
                let artifact = try await exported(client).result.artifactID
                try await damage.damage(artifact)
                let tenant = "damaged_\(index)"
                var code = StatusCode.ok
                var message = ""
                do {
                    let job = try await client.startJob(importing(artifact, into: "i1", tenant))
                    let done = try await client.waitFor(job.id, timeout: .seconds(120)) { $0.status.isTerminal }
                    #expect(!damage.atStart, "\(damage.name): StartJob admitted the import")
                    #expect(done.status == .failed && !done.error.retryable, "\(damage.name): \(done)")
                    code = StatusCode(rawValue: done.error.code) ?? .unknown
                    message = done.error.message
                } catch let error as RPCError {
                    #expect(damage.atStart, "\(damage.name): refused at StartJob: \(error)")
                    code = error.code
                    message = error.message
                }
                #expect(code == damage.expected, "\(damage.name): \(code) \(message)")
                #expect(message.contains(artifact), "\(damage.name): the message does not name the artifact: \(message)")
                #expect(try await tenantExists(target, tenant) == false, "\(damage.name): the target was written")
            }
            // Nothing of any of them was claimed either.
            let claims: Int = try await replicas.query {
                try await $0.execute("SELECT count(*)::int FROM tenant_claims WHERE tenant LIKE 'damaged%'", logger: logger).first!.decode(Int.self)
            }
            #expect(claims == 0)
        }
    }

    // MARK: Refusals

    @Test func anImportIsRefusedUpFrontForWhatCannotWork() async throws {
        try await withReplicas { replicas, _ in
            let source = replicas.instances["i0"]!
            let target = replicas.instances["i1"]!
            try await run(source, TenantFixture.sql(schema: "fixture"))
            try await run(target, "CREATE SCHEMA taken; CREATE TABLE taken.t (a int);")
            let client = try await replicas.client(0)
            defer { client.close() }
            let artifact = try await exported(client).result.artifactID

            #expect(await statusCode { _ = try await client.startJob(importing(UUID().uuidString.lowercased(), into: "i1", "x")) } == .notFound)
            #expect(await statusCode { _ = try await client.startJob(importing("../etc", into: "i1", "x")) } == .invalidArgument)
            #expect(await statusCode { _ = try await client.startJob(importing(artifact, into: "nope", "x")) } == .notFound)
            #expect(await statusCode { _ = try await client.startJob(importing(artifact, into: "i1", "taken")) } == .alreadyExists)
            #expect(await statusCode { _ = try await client.startJob(importing(artifact, into: "i1", "Bad-Name")) } == .invalidArgument)
            #expect(await statusCode { _ = try await client.startJob(export("i0", "missing")) } == .notFound)
            // Two tables whose names differ only in Unicode normalization (é precomposed, and e
            // with a combining accent): PostgreSQL keeps them apart, Ferry refuses to merge them.
            try await run(source, "CREATE SCHEMA uni; CREATE TABLE uni.\"caf\u{e9}\" (a int); CREATE TABLE uni.\"cafe\u{301}\" (a int);")
            #expect(await statusCode { _ = try await client.startJob(export("i0", "uni")) } == .failedPrecondition)
            var negative = export("i0", "fixture")
            negative.export.ttlSeconds = -1
            #expect(await statusCode { _ = try await client.startJob(negative) } == .invalidArgument)
            // An expired artifact (not swept yet) is not imported.
            try await replicas.query { connection in
                try await connection.execute("UPDATE job_artifacts SET expires_at = now() - interval '1 minute' WHERE id = \(UUID(uuidString: artifact)!)", logger: logger)
            }
            #expect(await statusCode { _ = try await client.startJob(importing(artifact, into: "i1", "late")) } == .failedPrecondition)
            // A per-job expiry.
            let short = try await client.startJob(export("i0", "fixture", ttl: 3600))
            let done = try await client.waitFor(short.id, timeout: .seconds(120)) { $0.status.isTerminal }
            let listed = try await client.unary(FerryMethods.getArtifact, .with { $0.artifactID = done.result.artifactID })
            #expect(abs(listed.expiresAt.date.timeIntervalSince(listed.createdAt.date) - 3600) < 5)
            #expect(try await tenantExists(target, "late") == false)
        }
    }

    /// A server without an artifact store refuses export and import at StartJob.
    @Test func aServerWithoutAnArtifactStoreRefusesArchives() async throws {
        try await Replicas.with(count: 1, instances: 1, environments: [Self.kinds]) { replicas in
            try await run(replicas.instances["i0"]!, "CREATE SCHEMA small; CREATE TABLE small.t (a int);")
            let client = try await replicas.client(0)
            defer { client.close() }
            #expect(await statusCode { _ = try await client.startJob(export("i0", "small")) } == .failedPrecondition)
            #expect(await statusCode { _ = try await client.startJob(importing(UUID().uuidString.lowercased(), into: "i0", "x")) } == .failedPrecondition)
        }
    }

    // MARK: Resume

    /// An import whose table fails verification in attempt 1 (a test hook changes a row before
    /// the checksum, after letting the other tables finish) fails with DATA_LOSS; its rerun copies only the tables not verified, and
    /// the ones verified before are untouched on the target (same xmin).
    @Test func aRerunOfAFailedImportResumesPerTable() async throws {
        try await withReplicas(environment: ["FERRY_TEST_CLONE_BEFORE_VERIFY": "orders@1:SELECT pg_sleep(3); UPDATE {schema}.orders SET amount = amount + 1 WHERE id = 7"]) { replicas, _ in
            let source = replicas.instances["i0"]!
            let target = replicas.instances["i1"]!
            try await run(source, TenantFixture.sql(schema: "fixture"))
            let client = try await replicas.client(0)
            defer { client.close() }
            let artifact = try await exported(client).result.artifactID
            let job = try await client.startJob(importing(artifact, into: "i1", "restored"))
            let failed = try await client.waitFor(job.id, timeout: .seconds(120)) { $0.status.isTerminal }
            #expect(failed.status == .failed && failed.error.code == "DATA_LOSS" && failed.error.message.contains("orders"), "\(failed.error)")
            let verified: [String] = try await replicas.query { connection in
                try await connection.execute("""
                    SELECT table_name FROM job_tables WHERE root_job_id = \(UUID(uuidString: job.id)!) AND status = 'VERIFIED' ORDER BY 1
                    """, logger: logger).map { try $0.decode(String.self) }
            }
            #expect(!verified.isEmpty && !verified.contains("orders"))
            // Half a tenant is not passed on: exporting the unfinished target is refused.
            #expect(await statusCode { _ = try await client.startJob(export("i1", "restored")) } == .failedPrecondition)
            let xmins = { (table: String) in
                "SELECT string_agg(xmin::text, ',' ORDER BY ctid) FROM restored.\"\(table.replacingOccurrences(of: "\"", with: "\"\""))\""
            }
            var before: [String: String] = [:]
            for table in verified { before[table] = try await scalar(target, xmins(table), as: String?.self) ?? "" }

            let rerun = try await client.rerun(job.id)
            let done = try await client.waitFor(rerun.id, timeout: .seconds(120)) { $0.status.isTerminal }
            #expect(done.status == .succeeded, "\(done.error)")
            for table in verified {
                #expect(try await scalar(target, xmins(table), as: String?.self) ?? "" == before[table], "\(table) was copied again")
            }
            #expect(try await TenantInspection.data(target, schema: "restored") == TenantInspection.data(source, schema: "fixture"))
            // Finished, it may be exported like any tenant.
            let again = try await client.startJob(export("i1", "restored"))
            #expect(try await client.waitFor(again.id, timeout: .seconds(120)) { $0.status.isTerminal }.status == .succeeded)
        }
    }
}
