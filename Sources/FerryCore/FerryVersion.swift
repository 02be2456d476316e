/// The version of this Ferry build, shared by `ferryd`, `ferry` and the client library.
public enum FerryVersion {
    /// Semantic version of the package.
    public static let current = "0.1.0"
}
