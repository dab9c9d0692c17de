#[derive(collegedb::Sharded)]
#[sharded(table = "sensors")]
struct Sensor {
    #[sharded(key)]
    id: i64,
    #[sharded(unique)]
    calibration: f64,
}

fn main() {}
