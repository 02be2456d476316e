import LibPQ

/// One COPY from a source session into a target session: the source's `COPY … TO STDOUT`
/// messages are handed to the target's `COPY … FROM STDIN` as they arrive, gathered into
/// larger messages, with no file in between and no row decoded in Swift.
struct CopyPipe {
    /// The statement run on the source, e.g. `COPY "s"."t" ("a", "b") TO STDOUT (FORMAT binary)`.
    var copyOut: String
    /// The statement run on the target, e.g. `COPY "d"."t" ("a", "b") FROM STDIN (FORMAT binary, FREEZE)`.
    var copyIn: String

    /// How much is gathered before one message goes to the target: the source sends one
    /// message per row, and fewer, larger messages cost both libpq and the target less.
    static let chunkBytes = 256 << 10
    /// How often (in bytes) progress is reported.
    static let reportBytes: Int64 = 4 << 20

    /// Runs the COPY and returns the rows the target loaded and the bytes forwarded. On a
    /// source failure the target's COPY is aborted, so nothing half-read is committed.
    /// Blocks: call it on a ``PQThread``.
    func run(from source: PQConnection, to target: PQConnection, progress: (_ rows: Int64, _ bytes: Int64) -> Void) throws -> (rows: Int64, bytes: Int64) {
        try target.startCopyIn(copyIn)
        do {
            try source.startCopyOut(copyOut)
        } catch {
            _ = try? target.endCopyIn(failure: "the source COPY did not start")
            throw error
        }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunkBytes, alignment: 16)
        defer { chunk.deallocate() }
        var used = 0
        var bytes: Int64 = 0
        var messages: Int64 = 0
        var reported: (rows: Int64, bytes: Int64) = (0, 0)
        do {
            while try source.readCopyData({ message in
                if used + message.count > chunk.count, used > 0 {
                    try target.writeCopyData(UnsafeRawBufferPointer(rebasing: chunk[0..<used]))
                    used = 0
                }
                if message.count > chunk.count {
                    try target.writeCopyData(message)
                } else {
                    UnsafeMutableRawBufferPointer(rebasing: chunk[used..<(used + message.count)]).copyMemory(from: message)
                    used += message.count
                }
                bytes += Int64(message.count)
                messages += 1
            }) {
                if bytes - reported.bytes >= Self.reportBytes {
                    progress(messages - reported.rows, bytes - reported.bytes)
                    reported = (messages, bytes)
                }
            }
            if used > 0 { try target.writeCopyData(UnsafeRawBufferPointer(rebasing: chunk[0..<used])) }
        } catch {
            _ = try? target.endCopyIn(failure: "the source COPY failed: \(error)")
            throw error
        }
        let rows = try target.endCopyIn()
        // The source sends a message per row, plus a header and a trailer in binary format:
        // the target's count is the true one.
        progress(max(0, rows - reported.rows), bytes - reported.bytes)
        return (rows, bytes)
    }
}
