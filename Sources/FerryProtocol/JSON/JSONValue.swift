import NIOCore

/// Any JSON value: what a status frame's `details` holds, and how tests and tools look at a
/// message without knowing its type.
public enum JSONValue: Sendable, Hashable, Codable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value):
            if value.rounded() == value, abs(value) < 9.007_199_254_740_992e15 {
                try container.encode(Int64(value))
            } else {
                try container.encode(value)
            }
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// The kinds of JSON value, named as error messages name them.
    public enum Kind: String, Sendable {
        case null, boolean, number, string, array, object
    }

    public var kind: Kind {
        switch self {
        case .null: .null
        case .bool: .boolean
        case .number: .number
        case .string: .string
        case .array: .array
        case .object: .object
        }
    }

    /// The JSON type's name, for error messages.
    public var typeName: String { kind.rawValue }

    public subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    /// Parses UTF-8 JSON text holding exactly one value; nil when it is not JSON.
    public init?(parsing buffer: ByteBuffer) {
        let value: JSONValue? = buffer.withUnsafeReadableBytes { bytes in
            var reader = JSONReader(bytes)
            guard let value = try? reader.parseValue() else { return nil }
            reader.skipWhitespace()
            return reader.isAtEnd ? value : nil
        }
        guard let value else { return nil }
        self = value
    }

    public init?(parsing text: String) {
        self.init(parsing: ByteBuffer(string: text))
    }

    /// The value as compact JSON text, object keys sorted.
    public var jsonText: String {
        var buffer = ByteBuffer()
        buffer.writeJSON(self)
        return String(buffer: buffer)
    }
}

extension ByteBuffer {
    /// Writes `value` as compact JSON, object keys sorted (so equal values give equal bytes).
    public mutating func writeJSON(_ value: JSONValue) {
        switch value {
        case .null: writeStaticString("null")
        case .bool(let flag): writeStaticString(flag ? "true" : "false")
        case .number(let number): writeJSONNumber(number)
        case .string(let text): writeJSONString(text)
        case .array(let values):
            writeInteger(UInt8(ascii: "["))
            for (index, element) in values.enumerated() {
                if index > 0 { writeInteger(UInt8(ascii: ",")) }
                writeJSON(element)
            }
            writeInteger(UInt8(ascii: "]"))
        case .object(let members):
            writeInteger(UInt8(ascii: "{"))
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { writeInteger(UInt8(ascii: ",")) }
                writeJSONString(key)
                writeInteger(UInt8(ascii: ":"))
                writeJSON(members[key]!)
            }
            writeInteger(UInt8(ascii: "}"))
        }
    }

    /// Integers print without a fraction (stream ids must read back as integers).
    public mutating func writeJSONNumber(_ number: Double) {
        if number.rounded() == number, abs(number) < 9.007_199_254_740_992e15 {
            writeString(String(Int64(number)))
        } else if number.isFinite {
            writeString("\(number)")
        } else {
            writeStaticString("null")
        }
    }

    /// Writes a JSON string: quotes, backslashes and control characters escaped, everything
    /// else (including non-ASCII and `/`) as is.
    public mutating func writeJSONString(_ text: String) {
        writeInteger(UInt8(ascii: "\""))
        var text = text
        text.withUTF8 { utf8 in
            var runStart = 0
            for (index, byte) in utf8.enumerated() where byte < 0x20 || byte == 0x22 || byte == 0x5C {
                writeBytes(UnsafeBufferPointer(rebasing: utf8[runStart..<index]))
                switch byte {
                case 0x22: writeStaticString("\\\"")
                case 0x5C: writeStaticString("\\\\")
                case 0x0A: writeStaticString("\\n")
                case 0x0D: writeStaticString("\\r")
                case 0x09: writeStaticString("\\t")
                case 0x08: writeStaticString("\\b")
                case 0x0C: writeStaticString("\\f")
                default:
                    let hex: [UInt8] = Array("0123456789abcdef".utf8)
                    writeStaticString("\\u00")
                    writeInteger(hex[Int(byte >> 4)])
                    writeInteger(hex[Int(byte & 0xF)])
                }
                runStart = index + 1
            }
            writeBytes(UnsafeBufferPointer(rebasing: utf8[runStart...]))
        }
        writeInteger(UInt8(ascii: "\""))
    }
}
