/// The responses of one call (or one watch), in order: an `AsyncSequence` that finishes after
/// status OK and throws ``RPCError`` for any other status.
///
/// Leaving the loop early (`break`, `return`, a thrown error) or cancelling the iterating task
/// stops the call on the server: the iterator's end sends `cancel`. A plain
/// `AsyncThrowingStream` would not notice the `break` and leave the server streaming into a
/// buffer nobody reads.
public struct FerryStream<Element: Sendable>: AsyncSequence, Sendable {
    private let base: AsyncThrowingStream<Element, any Error>
    private let abandon: @Sendable () -> Void

    init(_ base: AsyncThrowingStream<Element, any Error>, abandon: @escaping @Sendable () -> Void) {
        self.base = base
        self.abandon = abandon
    }

    public func makeAsyncIterator() -> Iterator {
        Iterator(base: base.makeAsyncIterator(), end: IterationEnd(abandon))
    }

    public struct Iterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<Element, any Error>.Iterator
        let end: IterationEnd

        public mutating func next() async throws -> Element? {
            try await base.next()
        }
    }
}

/// Runs its action when the iterator holding it goes away; the action must be harmless after
/// the call ended by itself.
final class IterationEnd: Sendable {
    private let action: @Sendable () -> Void
    init(_ action: @escaping @Sendable () -> Void) { self.action = action }
    deinit { action() }
}
