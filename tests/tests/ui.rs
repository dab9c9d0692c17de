//! Compile-time checks of `#[derive(Sharded)]`: each mistake fails to compile with an error at
//! the offending span (reviewed `.stderr` snapshots), and every supported form compiles.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}
