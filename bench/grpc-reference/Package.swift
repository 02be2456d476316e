// swift-tools-version:6.1
// A grpc-swift-2 reference for `scripts/bench-rpc`: the same Health/Check served over
// HTTP/2 + TLS by grpc-swift-2, and a load generator shaped like `ferry bench rpc`.
// Not part of Ferry: a separate package, built only by the benchmark script.
import PackageDescription

let package = Package(
    name: "grpc-reference",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0", traits: []),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // ferry.v1.Health/Check as grpc-swift-2 sees it: hand-written protobuf messages
        // (proto/ferry/v1/health.proto) and the service/client glue protoc-gen-grpc-swift would write.
        .target(
            name: "FerryHealthGRPC",
            dependencies: [
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .executableTarget(
            name: "grpc-ref-server",
            dependencies: [
                "FerryHealthGRPC",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "grpc-ref-bench",
            dependencies: [
                "FerryHealthGRPC",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
    ]
)
