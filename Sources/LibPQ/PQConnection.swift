import CLibPQ
import Foundation

/// An error from libpq or the server, with the server's SQLSTATE when it sent one.
public struct PQError: Error, Sendable, CustomStringConvertible {
    /// The five-character SQLSTATE (e.g. `57P01` when an administrator terminated the
    /// session), nil for a failure on this side.
    public var sqlState: String?
    public var message: String
    /// True when the connection itself is gone (the server closed it, the network failed):
    /// a retry on a new connection may succeed.
    public var connectionLost: Bool

    public init(sqlState: String? = nil, _ message: String, connectionLost: Bool = false) {
        self.sqlState = sqlState
        self.message = message
        self.connectionLost = connectionLost
    }

    public var description: String {
        sqlState.map { "\(message) (SQLSTATE \($0))" } ?? message
    }
}

/// One libpq connection (`PGconn`).
///
/// Every call blocks its thread until the server answers, so a connection is used only
/// from ``PQThread/run(_:)``'s threads, never from an event loop or a Swift concurrency
/// executor. It is used by one thread at a time (libpq's rule); ``cancel()`` alone may be
/// called from anywhere, at any time.
public final class PQConnection: @unchecked Sendable {
    private let connection: OpaquePointer
    /// libpq's cancel handle, made once at connect: PQcancel is the one call that is safe
    /// from another thread while a statement runs.
    private let cancelHandle: OpaquePointer?
    private let lock = NSLock()
    private var finished = false
    /// Set by ``cancel()``: a statement not yet sent is refused, since a cancel request
    /// reaches only a statement already running.
    private var cancelled = false

    /// Connects with libpq's keyword parameters (`host`, `port`, `user`, `password`,
    /// `dbname`, `sslmode`, `application_name`, `connect_timeout`, …). Blocks.
    public init(parameters: [(String, String)]) throws(PQError) {
        let keys = parameters.map { strdup($0.0) } + [nil]
        let values = parameters.map { strdup($0.1) } + [nil]
        defer {
            keys.forEach { free($0) }
            values.forEach { free($0) }
        }
        let connection: OpaquePointer? = keys.withUnsafeBufferPointer { keyPointer in
            values.withUnsafeBufferPointer { valuePointer in
                keyPointer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: keys.count) { k in
                    valuePointer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: values.count) { v in
                        PQconnectdbParams(k, v, 0)
                    }
                }
            }
        }
        guard let connection else { throw PQError("libpq could not allocate a connection") }
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = Self.trimmed(PQerrorMessage(connection))
            PQfinish(connection)
            throw PQError(message, connectionLost: true)
        }
        self.connection = connection
        self.cancelHandle = PQgetCancel(connection)
    }

    deinit {
        close()
        if let cancelHandle { PQfreeCancel(cancelHandle) }
    }

    /// The server's version as libpq reports it, e.g. 150018 for 15.18.
    public var serverVersion: Int { Int(PQserverVersion(connection)) }

    /// The backend's process id (what `pg_backend_pid()` returns).
    public var backendPID: Int32 { PQbackendPID(connection) }

    /// Runs `sql` (one or more statements, no parameters) and returns the rows of the last
    /// one as text, NULL as nil. Blocks.
    @discardableResult
    public func execute(_ sql: String) throws(PQError) -> [[String?]] {
        try checkNotCancelled()
        guard let result = PQexec(connection, sql) else { throw connectionError() }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            return []
        case PGRES_TUPLES_OK:
            let rows = PQntuples(result)
            let columns = PQnfields(result)
            return (0..<rows).map { row in
                (0..<columns).map { column in
                    PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
                }
            }
        case PGRES_COPY_IN, PGRES_COPY_OUT:
            throw PQError("\(sql.prefix(40))… started a COPY; use the COPY calls")
        default:
            throw Self.resultError(result)
        }
    }

    /// Cancels the statement running now, and refuses any later one. Safe from any thread,
    /// and returns at once: the cancel request (a connection of its own to the server, which
    /// may take long when the server is unreachable) is sent from a thread of its own.
    public func cancel() {
        lock.lock()
        let first = !cancelled && !finished
        cancelled = true
        lock.unlock()
        guard first, cancelHandle != nil else { return }
        // The thread holds the connection, and so its cancel handle, until the request is sent.
        let thread = Thread { [self] in sendCancel() }
        thread.start()
    }

    private func sendCancel() {
        var buffer = [CChar](repeating: 0, count: 256)
        _ = PQcancel(cancelHandle, &buffer, 256)
    }

    private func checkNotCancelled() throws(PQError) {
        lock.lock()
        defer { lock.unlock() }
        if cancelled { throw PQError(sqlState: "57014", "cancelled before the statement was sent") }
    }

    /// Closes the connection. Safe to call more than once.
    public func close() {
        lock.lock()
        defer { lock.unlock() }
        guard !finished else { return }
        finished = true
        PQfinish(connection)
    }

    // MARK: COPY

    /// Starts `COPY … TO STDOUT`; read its data with ``readCopyData(_:)``.
    public func startCopyOut(_ sql: String) throws(PQError) {
        try start(sql, expecting: PGRES_COPY_OUT)
    }

    /// Starts `COPY … FROM STDIN`; send data with ``writeCopyData(_:count:)``, finish with
    /// ``endCopyIn(failure:)``.
    public func startCopyIn(_ sql: String) throws(PQError) {
        try start(sql, expecting: PGRES_COPY_IN)
    }

    private func start(_ sql: String, expecting status: ExecStatusType) throws(PQError) {
        try checkNotCancelled()
        guard let result = PQexec(connection, sql) else { throw connectionError() }
        defer { PQclear(result) }
        guard PQresultStatus(result) == status else { throw Self.resultError(result) }
    }

    /// The rows the last COPY OUT sent (its `COPY n` tag), once ``readCopyData(_:)`` returned
    /// false.
    public private(set) var copyOutRows: Int64 = 0

    /// Reads the next COPY OUT message (one row) and hands its bytes to `body`; the buffer is
    /// libpq's and valid only during the call. Returns false at the end of the data, after
    /// checking the COPY's result. Blocks.
    public func readCopyData(_ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Bool {
        var buffer: UnsafeMutablePointer<CChar>?
        let count = PQgetCopyData(connection, &buffer, 0)
        if count > 0, let buffer {
            defer { PQfreemem(buffer) }
            try body(UnsafeRawBufferPointer(start: buffer, count: Int(count)))
            return true
        }
        if count == -1 {
            copyOutRows = try finishCommand()
            return false
        }
        throw connectionError()
    }

    /// Sends COPY IN data. libpq buffers it and writes to the socket as its buffer fills.
    /// Blocks while the socket is full.
    public func writeCopyData(_ bytes: UnsafeRawBufferPointer) throws(PQError) {
        guard let base = bytes.baseAddress else { return }
        let sent = PQputCopyData(connection, base.assumingMemoryBound(to: CChar.self), Int32(bytes.count))
        guard sent == 1 else { throw connectionError() }
    }

    /// Ends COPY IN: with `failure` nil the server commits the rows (and the result is
    /// checked); with a message it aborts the COPY with that error. Returns the number of
    /// rows the server loaded.
    @discardableResult
    public func endCopyIn(failure: String? = nil) throws(PQError) -> Int64 {
        guard PQputCopyEnd(connection, failure) == 1 else { throw connectionError() }
        return try finishCommand()
    }

    /// Reads the results of the command in progress until libpq has none left; returns the
    /// row count of a COPY (from its `COPY n` tag), and throws the first error.
    @discardableResult
    private func finishCommand() throws(PQError) -> Int64 {
        var failure: PQError?
        var rows: Int64 = 0
        while let result = PQgetResult(connection) {
            switch PQresultStatus(result) {
            case PGRES_COMMAND_OK, PGRES_TUPLES_OK:
                rows = Int64(String(cString: PQcmdTuples(result))) ?? 0
            case PGRES_COPY_IN:
                // The server still waits for data: a COPY that was never ended. Abort it.
                _ = PQputCopyEnd(connection, "aborted by the client")
            case PGRES_COPY_OUT:
                // Drain what is left, so the connection returns to idle.
                var buffer: UnsafeMutablePointer<CChar>?
                while PQgetCopyData(connection, &buffer, 0) > 0 { PQfreemem(buffer) }
            default:
                if failure == nil { failure = Self.resultError(result) }
            }
            PQclear(result)
            if PQstatus(connection) != CONNECTION_OK { break }
        }
        if let failure { throw failure }
        if PQstatus(connection) != CONNECTION_OK { throw connectionError() }
        return rows
    }

    // MARK: Errors

    private func connectionError() -> PQError {
        PQError(Self.trimmed(PQerrorMessage(connection)), connectionLost: PQstatus(connection) != CONNECTION_OK)
    }

    private static func resultError(_ result: OpaquePointer) -> PQError {
        let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
        let primary = PQresultErrorField(result, Int32(UInt8(ascii: "M"))).map { String(cString: $0) }
        return PQError(sqlState: state, primary ?? trimmed(PQresultErrorMessage(result)))
    }

    private static func trimmed(_ message: UnsafePointer<CChar>?) -> String {
        guard let message else { return "unknown libpq error" }
        let text = String(cString: message).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "the connection to the server was lost" : text
    }
}

/// Runs blocking libpq work on a thread of its own, so no event loop and no cooperative
/// executor thread ever waits on a socket. A thread per call is cheap next to what a call
/// does here (a connect, or a whole table's COPY).
public enum PQThread {
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                continuation.resume(with: Result { try body() })
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }
}
