pub fn main_cli() -> i32 {
    0
}
