import CZstd
import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One data file of an archive: COPY data compressed as a single zstd frame. The writer
/// hashes (SHA-256) and counts the bytes it writes, the reader the bytes it reads, so the
/// manifest can name every file's exact content and an import can check it.
///
/// Both block (plain `write(2)`/`read(2)` and zstd calls): run them on a `PQThread`.
enum ArchiveFile {
    /// zstd level 1: on two cores the export is bound by compression, and level 1 keeps
    /// pace with the source's COPY while still making archives smaller than pg_dump's gzip.
    static let compressionLevel: Int32 = 1

    /// A failure to write or read an archive file, naming the file.
    struct Failure: Error, CustomStringConvertible {
        var file: String
        var message: String
        /// The system error behind it, when there is one.
        var errno: Int32? = nil
        var description: String { "\(file): \(message)" }

        /// True when a retry may get past it: the filesystem failed (I/O error, a stale
        /// network file handle, no descriptors or space left), not the file's content.
        var transient: Bool {
            guard let errno else { return false }
            return [EIO, ESTALE, EMFILE, ENFILE, ENOSPC, EDQUOT, EINTR, EAGAIN, ENOMEM, ETIMEDOUT].contains(errno)
        }

        static func system(_ file: String, _ what: String) -> Failure {
            let code = Glibc.errno
            return Failure(file: file, message: "\(what): \(String(cString: strerror(code)))", errno: code)
        }
    }

    /// Set from another thread to stop a read or write between blocks.
    final class StopFlag: @unchecked Sendable {
        private let lock = NSLock()
        private var stopped = false
        init() {}
        func stop() { lock.withLock { stopped = true } }
        var isStopped: Bool { lock.withLock { stopped } }
    }

    /// Bytes (a digest) as lower-case hex.
    static func hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// The checksum and size of a finished file.
    struct Digest: Sendable, Hashable {
        var sha256: String
        var bytes: Int64
    }

    /// Writes COPY data to a new file through zstd.
    final class Writer {
        let path: String
        private let descriptor: Int32
        private let context: OpaquePointer
        private var hash = SHA256()
        private var written: Int64 = 0
        /// Uncompressed bytes gathered before each compression call: the source hands over
        /// one small message per row.
        private let input: UnsafeMutableRawBufferPointer
        private var used = 0
        private let output: UnsafeMutableRawBufferPointer
        private(set) var rawBytes: Int64 = 0

        /// Creates `path`, which must not exist.
        init(path: String) throws {
            self.path = path
            descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o640)
            guard descriptor >= 0 else { throw Failure.system(path, "cannot create") }
            guard let context = ZSTD_createCCtx() else {
                close(descriptor)
                throw Failure(file: path, message: "zstd could not allocate a compression context")
            }
            self.context = context
            ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, ArchiveFile.compressionLevel)
            ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1)
            input = .allocate(byteCount: 1 << 20, alignment: 16)
            output = .allocate(byteCount: ZSTD_CStreamOutSize(), alignment: 16)
        }

        deinit {
            ZSTD_freeCCtx(context)
            input.deallocate()
            output.deallocate()
            if descriptor >= 0 { close(descriptor) }
        }

        /// Adds uncompressed bytes.
        func append(_ bytes: UnsafeRawBufferPointer) throws {
            rawBytes += Int64(bytes.count)
            if used + bytes.count > input.count {
                try compress(UnsafeRawBufferPointer(rebasing: input[0..<used]), end: false)
                used = 0
            }
            if bytes.count > input.count {
                try compress(bytes, end: false)
            } else {
                UnsafeMutableRawBufferPointer(rebasing: input[used..<(used + bytes.count)]).copyMemory(from: bytes)
                used += bytes.count
            }
        }

        /// Ends the frame, flushes the file to disk, and returns its digest.
        func finish() throws -> Digest {
            try compress(UnsafeRawBufferPointer(rebasing: input[0..<used]), end: true)
            used = 0
            guard fsync(descriptor) == 0 else { throw Failure.system(path, "fsync") }
            return Digest(sha256: hex(hash.finalize()), bytes: written)
        }

        private func compress(_ bytes: UnsafeRawBufferPointer, end: Bool) throws {
            var source = ZSTD_inBuffer(src: bytes.baseAddress, size: bytes.count, pos: 0)
            while true {
                var sink = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
                let left = ZSTD_compressStream2(context, &sink, &source, end ? ZSTD_e_end : ZSTD_e_continue)
                if ZSTD_isError(left) != 0 { throw Failure(file: path, message: "zstd: \(String(cString: ZSTD_getErrorName(left)))") }
                try write(UnsafeRawBufferPointer(rebasing: output[0..<sink.pos]))
                if end ? left == 0 : source.pos == source.size { return }
            }
        }

        private func write(_ bytes: UnsafeRawBufferPointer) throws {
            guard !bytes.isEmpty else { return }
            hash.update(bufferPointer: bytes)
            written += Int64(bytes.count)
            var offset = 0
            while offset < bytes.count {
                let n = Foundation.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw Failure.system(path, "write")
                }
                offset += n
            }
        }
    }

    /// Reads a file's bytes as stored, hashing them, and returns its digest. `body` gets each
    /// block (valid only during the call). Only a regular file is read: a symbolic link, a
    /// FIFO or a device is refused without blocking on it. `stop` ends the read between
    /// blocks (a cancelled job).
    static func read(_ path: String, stop: StopFlag? = nil, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Digest {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard descriptor >= 0 else {
            if errno == ENOENT { throw Failure(file: path, message: "missing", errno: ENOENT) }
            if errno == ELOOP { throw Failure(file: path, message: "is a symbolic link") }
            throw Failure.system(path, "cannot open")
        }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw Failure.system(path, "fstat") }
        guard (status.st_mode & S_IFMT) == S_IFREG else { throw Failure(file: path, message: "is not a regular file") }
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { block.deallocate() }
        var hash = SHA256()
        var total: Int64 = 0
        while true {
            if stop?.isStopped == true { throw CancellationError() }
            let n = Foundation.read(descriptor, block.baseAddress, block.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure.system(path, "read")
            }
            if n == 0 { break }
            let chunk = UnsafeRawBufferPointer(rebasing: block[0..<n])
            hash.update(bufferPointer: chunk)
            total += Int64(n)
            try body(chunk)
        }
        return Digest(sha256: hex(hash.finalize()), bytes: total)
    }

    /// Reads a file and decompresses it, handing the COPY data to `body` in blocks. Fails on
    /// data that is not one complete zstd frame (truncated, corrupted: zstd checks its own
    /// content checksum too). Returns the stored file's digest.
    static func decompress(_ path: String, stop: StopFlag? = nil, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Digest {
        guard let context = ZSTD_createDCtx() else { throw Failure(file: path, message: "zstd could not allocate a decompression context") }
        defer { ZSTD_freeDCtx(context) }
        let output = UnsafeMutableRawBufferPointer.allocate(byteCount: ZSTD_DStreamOutSize(), alignment: 16)
        defer { output.deallocate() }
        var frameDone = false
        let digest = try read(path, stop: stop) { block in
            var source = ZSTD_inBuffer(src: block.baseAddress, size: block.count, pos: 0)
            while source.pos < source.size || !frameDone {
                if frameDone {
                    throw Failure(file: path, message: "data after the end of the compressed stream")
                }
                var sink = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
                let hint = ZSTD_decompressStream(context, &sink, &source)
                if ZSTD_isError(hint) != 0 { throw Failure(file: path, message: "zstd: \(String(cString: ZSTD_getErrorName(hint)))") }
                if sink.pos > 0 { try body(UnsafeRawBufferPointer(rebasing: output[0..<sink.pos])) }
                if hint == 0 { frameDone = true }
                // Input used up and the output not full: zstd wants the next block.
                if source.pos == source.size && sink.pos < sink.size { break }
            }
        }
        guard frameDone else { throw Failure(file: path, message: "the compressed stream is truncated") }
        return digest
    }
}
