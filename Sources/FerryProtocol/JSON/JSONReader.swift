/// A strict, allocation-light JSON reader over a byte buffer (RFC 8259, UTF-8).
///
/// Frames are read once: the envelope's few fields are parsed, everything else is only
/// validated and skipped, and a `call`'s `message` is handed on as its byte span for the
/// method's message type to decode. Nothing recurses on input depth: skipping is iterative,
/// and building a ``JSONValue`` stops at ``maxDepth``.
struct JSONReader {
    /// Why the bytes are not JSON; the position is for tests and debugging.
    struct SyntaxError: Error, Equatable {
        var offset: Int
    }

    /// Deepest nesting ``parseValue()`` builds (JSON of frames and status details is shallow).
    static let maxDepth = 64

    private let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    var isAtEnd: Bool { offset >= bytes.count }

    private func fail() -> SyntaxError { SyntaxError(offset: offset) }

    mutating func skipWhitespace() {
        while offset < bytes.count {
            switch bytes[offset] {
            case 0x20, 0x09, 0x0A, 0x0D: offset += 1
            default: return
            }
        }
    }

    /// The next non-whitespace byte, not consumed.
    mutating func peek() throws(SyntaxError) -> UInt8 {
        skipWhitespace()
        guard offset < bytes.count else { throw fail() }
        return bytes[offset]
    }

    mutating func expect(_ byte: UInt8) throws(SyntaxError) {
        guard try peek() == byte else { throw fail() }
        offset += 1
    }

    /// Reads the members of an object whose `{` is next, calling `member` with each key; the
    /// callback must consume the member's value.
    mutating func readObject(_ member: (inout JSONReader, String) throws(SyntaxError) -> Void) throws(SyntaxError) {
        try expect(UInt8(ascii: "{"))
        if try peek() == UInt8(ascii: "}") {
            offset += 1
            return
        }
        while true {
            guard try peek() == UInt8(ascii: "\"") else { throw fail() }
            let key = try readString()
            try expect(UInt8(ascii: ":"))
            try member(&self, key)
            switch try peek() {
            case UInt8(ascii: ","): offset += 1
            case UInt8(ascii: "}"):
                offset += 1
                return
            default: throw fail()
            }
        }
    }

    /// The kind of the next value, for precise messages about a field of the wrong type.
    mutating func peekKind() throws(SyntaxError) -> JSONValue.Kind {
        switch try peek() {
        case UInt8(ascii: "{"): .object
        case UInt8(ascii: "["): .array
        case UInt8(ascii: "\""): .string
        case UInt8(ascii: "t"), UInt8(ascii: "f"): .boolean
        case UInt8(ascii: "n"): .null
        default: .number
        }
    }

    // MARK: Values

    /// Parses the next value into a ``JSONValue``.
    mutating func parseValue(depth: Int = 0) throws(SyntaxError) -> JSONValue {
        guard depth < Self.maxDepth else { throw fail() }
        switch try peek() {
        case UInt8(ascii: "{"):
            var object: [String: JSONValue] = [:]
            try readObject { (reader, key) throws(SyntaxError) in
                object[key] = try reader.parseValue(depth: depth + 1)
            }
            return .object(object)
        case UInt8(ascii: "["):
            offset += 1
            var array: [JSONValue] = []
            if try peek() == UInt8(ascii: "]") {
                offset += 1
                return .array(array)
            }
            while true {
                array.append(try parseValue(depth: depth + 1))
                switch try peek() {
                case UInt8(ascii: ","): offset += 1
                case UInt8(ascii: "]"):
                    offset += 1
                    return .array(array)
                default: throw fail()
                }
            }
        case UInt8(ascii: "\""):
            return .string(try readString())
        case UInt8(ascii: "t"):
            try literal("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null")
            return .null
        default:
            return .number(try readNumber())
        }
    }

    /// Validates and skips the next value; returns the byte range it occupied.
    mutating func skipValue() throws(SyntaxError) -> Range<Int> {
        _ = try peek()
        let start = offset
        // Iterative: a 4 MiB run of `[` must not recurse 4 million frames deep. `stack` holds
        // one bit per open container (1 = object), and whether a key is expected next.
        var stack: [Bool] = []
        var expectingKey = false
        while true {
            if expectingKey {
                guard try peek() == UInt8(ascii: "\"") else { throw fail() }
                try skipString()
                try expect(UInt8(ascii: ":"))
                expectingKey = false
            }
            switch try peek() {
            case UInt8(ascii: "{"):
                offset += 1
                if try peek() == UInt8(ascii: "}") {
                    offset += 1
                } else {
                    stack.append(true)
                    expectingKey = true
                    continue
                }
            case UInt8(ascii: "["):
                offset += 1
                if try peek() == UInt8(ascii: "]") {
                    offset += 1
                } else {
                    stack.append(false)
                    continue
                }
            case UInt8(ascii: "\""): try skipString()
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            default: _ = try readNumber()
            }
            // After a complete value: close containers or move to the next element.
            while let isObject = stack.last {
                let next = try peek()
                if next == UInt8(ascii: ",") {
                    offset += 1
                    expectingKey = isObject
                    break
                } else if next == UInt8(ascii: isObject ? "}" : "]") {
                    offset += 1
                    stack.removeLast()
                } else {
                    throw fail()
                }
            }
            if stack.isEmpty { return start..<offset }
        }
    }

    private mutating func literal(_ word: StaticString) throws(SyntaxError) {
        let count = word.utf8CodeUnitCount
        guard offset + count <= bytes.count else { throw fail() }
        let pointer = word.utf8Start
        for index in 0..<count where bytes[offset + index] != pointer[index] { throw fail() }
        offset += count
    }

    /// Reads a number by the JSON grammar (no leading zeros, no `+`, no bare `.`).
    mutating func readNumber() throws(SyntaxError) -> Double {
        skipWhitespace()
        let start = offset
        func digits(_ reader: inout JSONReader) -> Int {
            let from = reader.offset
            while reader.offset < reader.bytes.count, (0x30...0x39).contains(reader.bytes[reader.offset]) { reader.offset += 1 }
            return reader.offset - from
        }
        if offset < bytes.count, bytes[offset] == UInt8(ascii: "-") { offset += 1 }
        guard offset < bytes.count else { throw fail() }
        if bytes[offset] == UInt8(ascii: "0") {
            offset += 1
        } else if digits(&self) == 0 {
            throw fail()
        }
        if offset < bytes.count, bytes[offset] == UInt8(ascii: ".") {
            offset += 1
            guard digits(&self) > 0 else { throw fail() }
        }
        if offset < bytes.count, bytes[offset] | 0x20 == UInt8(ascii: "e") {
            offset += 1
            if offset < bytes.count, bytes[offset] == UInt8(ascii: "+") || bytes[offset] == UInt8(ascii: "-") { offset += 1 }
            guard digits(&self) > 0 else { throw fail() }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<offset]), as: UTF8.self)
        guard let value = Double(text), value.isFinite else { throw fail() }
        return value
    }

    // MARK: Strings

    /// Reads a string whose `"` is next, resolving escapes.
    mutating func readString() throws(SyntaxError) -> String {
        try expect(UInt8(ascii: "\""))
        let start = offset
        // Fast path: no escapes, so the bytes are the string (validated as UTF-8 by skipping).
        var hasEscape = false
        while true {
            guard offset < bytes.count else { throw fail() }
            let byte = bytes[offset]
            if byte == UInt8(ascii: "\"") { break }
            if byte == UInt8(ascii: "\\") {
                hasEscape = true
                offset += 1
                guard offset < bytes.count else { throw fail() }
                offset += 1
                continue
            }
            try skipCharacter(byte)
        }
        let raw = UnsafeRawBufferPointer(rebasing: bytes[start..<offset])
        offset += 1
        guard hasEscape else { return String(decoding: raw, as: UTF8.self) }
        return try unescape(raw)
    }

    private mutating func skipString() throws(SyntaxError) {
        try expect(UInt8(ascii: "\""))
        while true {
            guard offset < bytes.count else { throw fail() }
            let byte = bytes[offset]
            if byte == UInt8(ascii: "\"") {
                offset += 1
                return
            }
            if byte == UInt8(ascii: "\\") {
                offset += 1
                guard offset < bytes.count else { throw fail() }
                if bytes[offset] == UInt8(ascii: "u") {
                    guard offset + 4 < bytes.count else { throw fail() }
                    for index in 1...4 where Self.hexValue(bytes[offset + index]) == nil { throw fail() }
                    offset += 5
                } else {
                    guard Self.simpleEscape(bytes[offset]) != nil else { throw fail() }
                    offset += 1
                }
                continue
            }
            try skipCharacter(byte)
        }
    }

    /// Skips one character of a string's raw text: refuses control characters and anything
    /// that is not well-formed UTF-8 (overlong forms, surrogates, beyond U+10FFFF).
    private mutating func skipCharacter(_ byte: UInt8) throws(SyntaxError) {
        if byte < 0x20 { throw fail() }
        if byte < 0x80 {
            offset += 1
            return
        }
        let length: Int
        var lower: UInt8 = 0x80
        var upper: UInt8 = 0xBF
        switch byte {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; lower = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; upper = 0x9F
        case 0xF0: length = 4; lower = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; upper = 0x8F
        default: throw fail()
        }
        guard offset + length <= bytes.count else { throw fail() }
        let second = bytes[offset + 1]
        guard second >= lower, second <= upper else { throw fail() }
        for index in 2..<length where bytes[offset + index] & 0xC0 != 0x80 { throw fail() }
        offset += length
    }

    private func unescape(_ raw: UnsafeRawBufferPointer) throws(SyntaxError) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(raw.count)
        var index = 0
        func hex4(_ at: Int) -> UInt32? {
            guard at + 4 <= raw.count else { return nil }
            var value: UInt32 = 0
            for position in at..<(at + 4) {
                guard let digit = Self.hexValue(raw[position]) else { return nil }
                value = value << 4 | UInt32(digit)
            }
            return value
        }
        while index < raw.count {
            let byte = raw[index]
            guard byte == UInt8(ascii: "\\") else {
                out.append(byte)
                index += 1
                continue
            }
            let escape = raw[index + 1]
            if let simple = Self.simpleEscape(escape) {
                out.append(simple)
                index += 2
                continue
            }
            guard escape == UInt8(ascii: "u"), var scalar = hex4(index + 2) else { throw fail() }
            index += 6
            if (0xD800...0xDBFF).contains(scalar) {
                // A high surrogate must be followed by an escaped low one.
                guard index + 1 < raw.count, raw[index] == UInt8(ascii: "\\"), raw[index + 1] == UInt8(ascii: "u"),
                      let low = hex4(index + 2), (0xDC00...0xDFFF).contains(low)
                else { throw fail() }
                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                index += 6
            } else if (0xDC00...0xDFFF).contains(scalar) {
                throw fail()
            }
            guard let unicode = Unicode.Scalar(scalar) else { throw fail() }
            out.append(contentsOf: Array(String(Character(unicode)).utf8))
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func simpleEscape(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "\""): 0x22
        case UInt8(ascii: "\\"): 0x5C
        case UInt8(ascii: "/"): 0x2F
        case UInt8(ascii: "b"): 0x08
        case UInt8(ascii: "f"): 0x0C
        case UInt8(ascii: "n"): 0x0A
        case UInt8(ascii: "r"): 0x0D
        case UInt8(ascii: "t"): 0x09
        default: nil
        }
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: byte - 0x30
        case 0x41...0x46: byte - 0x41 + 10
        case 0x61...0x66: byte - 0x61 + 10
        default: nil
        }
    }
}
