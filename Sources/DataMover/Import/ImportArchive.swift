import Artifacts
import Executors
import FerryProtocol
import Foundation
import LibPQ

/// An export's archive, opened for an import: its manifest read and checked against the
/// artifact's record, so nothing an import does trusts bytes the export did not write.
///
/// ``open(_:store:)`` checks the manifest (cheap: the plan step runs it at StartJob);
/// ``verifyFiles()`` then reads every data file and checks its size and SHA-256 before the
/// import writes anything; loading checks each file's digest once more as it streams.
public struct ImportArchive: Sendable {
    public let record: ArtifactRecord
    let folder: String
    let manifest: ArchiveManifest
    /// The manifest's tables by name (names are unique, also under Unicode equivalence:
    /// ``ArchiveManifest/problem()`` refuses a manifest where they are not).
    let tables: [String: ArchiveManifest.Table]

    /// Opens the archive of `record` in `store`. Refuses (each as a ``PlanRefusal``):
    /// - an archive in another store (FAILED_PRECONDITION: the replicas do not share one
    ///   directory),
    /// - a manifest that is missing or does not match the record's SHA-256 (DATA_LOSS),
    /// - one that does not parse, is of an unknown format or version, or names a file
    ///   outside the archive's `data/` folder (INVALID_ARGUMENT).
    public static func open(_ record: ArtifactRecord, store: ArtifactStore) throws(PlanRefusal) -> ImportArchive {
        let id = record.id.uuidString.lowercased()
        guard record.storeID == store.storeID else {
            throw .failedPrecondition(["""
                artifact \(id) was written to artifact store \(record.storeID), but this replica's --artifact-dir \
                (\(store.directory)) is store \(store.storeID): every replica must see the same directory
                """])
        }
        let folder: String
        do {
            folder = try store.folder(of: record)
        } catch {
            throw .dataLoss("artifact \(id) has an invalid path: \(error)")
        }
        var text = [UInt8]()
        let digest: ArchiveFile.Digest
        do {
            digest = try ArchiveFile.read(folder + "/manifest.json") { block in
                guard text.count + block.count <= ArchiveManifest.maxBytes else {
                    throw ArchiveFile.Failure(file: "manifest.json", message: "is larger than \(ArchiveManifest.maxBytes) bytes")
                }
                text += block
            }
        } catch {
            throw .dataLoss("artifact \(id): manifest.json cannot be read: \(error)")
        }
        guard digest.sha256 == record.sha256 else {
            throw .dataLoss("artifact \(id): manifest.json does not match the artifact's checksum (sha256 \(digest.sha256), recorded \(record.sha256))")
        }
        let manifest: ArchiveManifest
        do {
            manifest = try JSONDecoder().decode(ArchiveManifest.self, from: Data(text))
        } catch {
            throw .invalidArgument(field: "importParams.artifactId", message: "names artifact \(id), whose manifest is not valid: \(error)")
        }
        if let problem = manifest.problem() {
            throw .invalidArgument(field: "importParams.artifactId", message: "names artifact \(id), whose manifest is refused: \(problem)")
        }
        return ImportArchive(record: record, folder: folder, manifest: manifest,
                             tables: Dictionary(manifest.tables.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first }))
    }

    /// Reads every data file of the tables not in `skipping` (the ones the lineage verified
    /// already) and checks its size and SHA-256 against the manifest; also refuses a file that
    /// is a symbolic link or not a regular file, or a `data` folder that is not a real
    /// directory. `stop` ends it between blocks. Blocks.
    func verifyFiles(skipping: Set<String> = [], stop: ArchiveFile.StopFlag? = nil) throws {
        let id = record.id.uuidString.lowercased()
        var status = stat()
        guard lstat(folder + "/data", &status) == 0, (status.st_mode & S_IFMT) == S_IFDIR else {
            throw PlanRefusal.dataLoss("artifact \(id): its data folder is missing or not a directory")
        }
        for table in manifest.tables where !skipping.contains(table.name) {
            for file in table.files {
                let path = folder + "/" + file.path
                guard lstat(path, &status) == 0 else { throw PlanRefusal.dataLoss("artifact \(id): \(file.path) (table \(table.name)) is missing") }
                guard (status.st_mode & S_IFMT) == S_IFREG else {
                    throw PlanRefusal.dataLoss("artifact \(id): \(file.path) (table \(table.name)) is not a regular file")
                }
                let digest: ArchiveFile.Digest
                do {
                    digest = try ArchiveFile.read(path, stop: stop) { _ in }
                } catch let failure as ArchiveFile.Failure where failure.transient {
                    throw failure
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    throw PlanRefusal.dataLoss("artifact \(id): \(file.path) (table \(table.name)) cannot be read: \(error)")
                }
                guard digest.bytes == file.bytes else {
                    throw PlanRefusal.dataLoss("artifact \(id): \(file.path) (table \(table.name)) has \(digest.bytes) bytes, the manifest says \(file.bytes)")
                }
                guard digest.sha256 == file.sha256 else {
                    throw PlanRefusal.dataLoss("artifact \(id): \(file.path) (table \(table.name)) is corrupt: sha256 \(digest.sha256), the manifest says \(file.sha256)")
                }
            }
        }
    }

    /// The schema to build, named as the source tenant; every table with the columns its
    /// files hold.
    var schema: TenantSchema {
        let tables = manifest.tables.map { table in
            TableDefinition(name: table.name, copyColumns: table.columns, binarySafe: table.copyFormat == "binary",
                            bytes: table.sourceBytes, blocks: 0)
        }
        return TenantSchema(tenant: manifest.source.tenant, tables: tables, unsupported: [], catalog: manifest.schema)
    }

    var checksumMethod: ArchiveManifest.ChecksumMethod { ArchiveManifest.ChecksumMethod(rawValue: manifest.checksumMethod) ?? .rowText }

    func files(of table: String) -> [ArchiveManifest.File] { tables[table]?.files ?? [] }

    /// The source's row count and checksum of `table`, as the export computed them.
    func checksum(of table: String) -> TableChecksum {
        let entry = tables[table]
        return TableChecksum(rows: entry?.rows ?? -1, sum: entry?.checksum ?? "")
    }

    /// The row hash expression the export's checksum of `table` summed.
    func rowHash(of table: String) -> String { tables[table]?.rowHash ?? "" }

    /// Streams each of `files` (decompressed) into its own `COPY … FROM STDIN` on `target`
    /// (each file holds a whole COPY stream, header and trailer included) and returns the rows
    /// the target loaded. A file whose digest no longer matches the manifest aborts its COPY,
    /// so nothing of it is committed. Blocks.
    func load(_ files: [ArchiveManifest.File], into target: PQConnection, copyIn: String, stop: ArchiveFile.StopFlag,
              progress: (_ bytes: Int64) -> Void) throws -> Int64 {
        var rows: Int64 = 0
        for file in files {
            try target.startCopyIn(copyIn)
            do {
                var pending: Int64 = 0
                let digest = try ArchiveFile.decompress(folder + "/" + file.path, stop: stop) { block in
                    try target.writeCopyData(block)
                    pending += Int64(block.count)
                    if pending >= CopyPipe.reportBytes {
                        progress(pending)
                        pending = 0
                    }
                }
                progress(pending)
                guard digest.sha256 == file.sha256, digest.bytes == file.bytes else {
                    throw ArchiveFile.Failure(file: file.path, message: "changed since it was checked (sha256 \(digest.sha256), the manifest says \(file.sha256))")
                }
            } catch {
                _ = try? target.endCopyIn(failure: "the archive could not be read: \(error)")
                throw error
            }
            rows += try target.endCopyIn()
        }
        return rows
    }
}
