@testable import FerryRPC
import FerryProtocol
import Testing

/// The connection's rules, without a socket.
@Suite struct ConnectionStateMachineTests {
    final class Stream {}
    typealias Machine = ConnectionStateMachine<Stream>

    private func machine(streams: Int = 2, outbound: Int = 100) -> Machine {
        Machine(maxConcurrentStreams: streams, outboundLimit: outbound)
    }

    @Test func callsOpenUpToTheLimitAndTheLimitCountsRunningHandlers() {
        var m = machine(streams: 2)
        let a = Stream(), b = Stream(), c = Stream()
        guard case .open = m.receivedCall(1, stream: a), case .open = m.receivedCall(2, stream: b) else {
            Issue.record("not opened")
            return
        }
        guard case .refuse(let error) = m.receivedCall(3, stream: c) else {
            Issue.record("third call admitted")
            return
        }
        #expect(error.code == .resourceExhausted)
        // Stream 1's status is written, but its handler still winds down: still counted.
        let check1 = m.endStream(1, a)
        #expect(check1)
        guard case .refuse = m.receivedCall(3, stream: c) else {
            Issue.record("admitted while two handlers run")
            return
        }
        let check2 = !m.handlerReturned()
        #expect(check2)
        guard case .open = m.receivedCall(3, stream: c) else {
            Issue.record("not admitted after a handler returned")
            return
        }
    }

    @Test func aReusedOpenIdEndsTheOpenStreamAndAnEndedIdIsFreeAgain() {
        var m = machine()
        let first = Stream(), second = Stream()
        _ = m.receivedCall(5, stream: first)
        guard case .endOpenStream(let existing) = m.receivedCall(5, stream: second) else {
            Issue.record("reuse not caught")
            return
        }
        #expect(existing === first)
        let check3 = m.endStream(5, first)
        #expect(check3)
        let check4 = !m.endStream(5, first)
        #expect(check4, "a stream ends once")
        _ = m.handlerReturned()
        guard case .open = m.receivedCall(5, stream: second) else {
            Issue.record("id not free after its status")
            return
        }
        // The old stream's late writes are told apart from the new stream's.
        #expect(!m.isOpen(5, first) && m.isOpen(5, second))
    }

    @Test func anInvalidCallOnAnOpenIdEndsThatStream() {
        var m = machine()
        let open = Stream()
        _ = m.receivedCall(7, stream: open)
        guard case .endOpenStream(let existing) = m.receivedInvalidCall(7, RPCError(.invalidArgument, "x")),
              case .refuse(let error) = m.receivedInvalidCall(8, RPCError(.invalidArgument, "bad")) else {
            Issue.record("wrong actions")
            return
        }
        #expect(existing === open && error.message == "bad")
    }

    @Test func aViolationSendsGoawayOnceAndDiscardsInput() {
        var m = machine()
        let open = Stream()
        _ = m.receivedCall(3, stream: open)
        let check5 = m.receivedViolation() == .goaway(lastStream: 3, close: false)
        #expect(check5)
        let check6 = m.receivedViolation() == .none
        #expect(check6)
        #expect(m.discardingInput)
        guard case .ignore = m.receivedCall(9, stream: Stream()) else {
            Issue.record("a call after a violation was read")
            return
        }
        #expect(m.receivedCancel(3) == nil && !m.receivedPing())
        // The connection closes when the last handler returns.
        let check7 = m.endStream(3, open)
        #expect(check7)
        let check8 = m.handlerReturned()
        #expect(check8)
    }

    @Test func shutdownRefusesNewCallsButLetsOpenOnesFinish() {
        var m = machine()
        let open = Stream()
        _ = m.receivedCall(11, stream: open)
        let check9 = m.shutdown() == .goaway(lastStream: 11, close: false)
        #expect(check9)
        guard case .refuse(let error) = m.receivedCall(13, stream: Stream()) else {
            Issue.record("call admitted after goaway")
            return
        }
        #expect(error.code == .unavailable)
        #expect(error.details == .object(["notProcessed": .bool(true)]), "a refused call says it never ran, so clients may send it again")
        #expect(m.receivedCancel(11) === open, "open streams are still served")
        #expect(m.receivedPing())
        #expect(m.drainExpired().first === open)
        var idle = machine()
        let check10 = idle.shutdown() == .goaway(lastStream: 0, close: true)
        #expect(check10)
    }

    @Test func idlenessEndsOnlyIdleOrStalledConnections() {
        var watching = machine()
        _ = watching.receivedCall(1, stream: Stream())
        let check11 = watching.idle(partialFrame: false).0 == .none
        #expect(check11, "a long watch keeps its connection")
        var stalled = machine()
        _ = stalled.receivedCall(1, stream: Stream())
        let (action, reason) = stalled.idle(partialFrame: true)
        #expect(action == .goaway(lastStream: 1, close: false) && reason == "a frame stayed incomplete")
        var idle = machine()
        let check12 = idle.idle(partialFrame: false) == (.goaway(lastStream: 0, close: true), "no open stream and no frame")
        #expect(check12)
    }

    @Test func writesWaitInOrderWhileTheOutboundBufferIsFull() {
        var m = machine(outbound: 100)
        let check13 = m.requestWrite(150) == .write
        #expect(check13, "one write may start below the limit, however large")
        #expect(m.bytesInFlight == 150)
        guard case .wait(let first) = m.requestWrite(10), case .wait(let second) = m.requestWrite(20) else {
            Issue.record("writes over the limit did not wait")
            return
        }
        m.forceWrite(40)  // a final status never waits
        #expect(m.bytesInFlight == 190)
        let check14 = m.writeCompleted(40) == []
        #expect(check14, "still over the limit")
        // Below the limit again: the first waiter starts; the buffer is at the limit once more.
        let check15 = m.writeCompleted(60) == [first]
        #expect(check15, "the first in line starts")
        #expect(m.bytesInFlight == 100)
        // A newcomer queues behind the earlier waiter.
        guard case .wait(let third) = m.requestWrite(5) else {
            Issue.record("newcomer jumped the queue")
            return
        }
        let check16 = m.cancelWait(third) && !m.cancelWait(third)
        #expect(check16)
        let check17 = m.writeCompleted(10) == [second]
        #expect(check17, "then the second, in arrival order")
        #expect(m.bytesInFlight == 110)
        let check18 = m.writeCompleted(110) == []
        #expect(check18)
        #expect(m.bytesInFlight == 0)
    }

    @Test func closingFailsWaitingWritersAndEndsOpenStreams() {
        var m = machine(outbound: 10)
        let open = Stream()
        _ = m.receivedCall(1, stream: open)
        _ = m.requestWrite(10)
        guard case .wait(let ticket) = m.requestWrite(1) else {
            Issue.record("no wait")
            return
        }
        let (streams, writers) = m.channelClosed()
        #expect(streams.first === open && writers == [ticket])
        let check18 = m.requestWrite(1) == .closed
        #expect(check18)
        let check19 = m.shutdown() == .none
        #expect(check19)
    }
}
