//! Weighted vocabularies for synthetic citizens: Vietnamese family names,
//! middle names, given names, ethnicities, religions, blood types, streets.
//! Weights are rough national shares; they only need to look realistic.

/// (value, weight)
pub type Weighted = &'static [(&'static str, u32)];

pub const SURNAMES: Weighted = &[
    ("Nguyễn", 380),
    ("Trần", 110),
    ("Lê", 95),
    ("Phạm", 70),
    ("Huỳnh", 40),
    ("Hoàng", 35),
    ("Phan", 45),
    ("Vũ", 30),
    ("Võ", 35),
    ("Đặng", 21),
    ("Bùi", 20),
    ("Đỗ", 14),
    ("Hồ", 13),
    ("Ngô", 13),
    ("Dương", 10),
    ("Lý", 5),
    ("Trương", 8),
    ("Đinh", 6),
    ("Lâm", 5),
    ("Mai", 4),
    ("Tạ", 3),
    ("Châu", 3),
];

pub const MIDDLE_MALE: Weighted = &[
    ("Văn", 300),
    ("Hữu", 60),
    ("Đức", 60),
    ("Minh", 80),
    ("Quốc", 50),
    ("Thanh", 40),
    ("Công", 40),
    ("Gia", 40),
    ("Hoàng", 30),
    ("Xuân", 20),
    ("Tấn", 30),
    ("Đình", 30),
    ("Anh", 20),
];

pub const MIDDLE_FEMALE: Weighted = &[
    ("Thị", 400),
    ("Ngọc", 80),
    ("Thu", 40),
    ("Thanh", 40),
    ("Kim", 40),
    ("Mỹ", 30),
    ("Bảo", 30),
    ("Phương", 30),
    ("Hồng", 30),
    ("Thùy", 30),
    ("Khánh", 20),
];

pub const GIVEN_MALE: Weighted = &[
    ("An", 20),
    ("Bình", 20),
    ("Cường", 20),
    ("Dũng", 30),
    ("Dương", 10),
    ("Đạt", 20),
    ("Hải", 25),
    ("Hiếu", 20),
    ("Hoàng", 15),
    ("Huy", 30),
    ("Hùng", 25),
    ("Khang", 15),
    ("Khoa", 15),
    ("Long", 25),
    ("Lộc", 15),
    ("Minh", 35),
    ("Nam", 30),
    ("Nghĩa", 15),
    ("Phong", 15),
    ("Phúc", 20),
    ("Quân", 20),
    ("Quang", 20),
    ("Sơn", 20),
    ("Tài", 15),
    ("Thắng", 15),
    ("Thành", 25),
    ("Tiến", 15),
    ("Toàn", 15),
    ("Trung", 20),
    ("Tuấn", 30),
    ("Việt", 15),
    ("Vinh", 15),
];

pub const GIVEN_FEMALE: Weighted = &[
    ("Anh", 35),
    ("Chi", 20),
    ("Dung", 15),
    ("Giang", 15),
    ("Hà", 20),
    ("Hạnh", 15),
    ("Hằng", 20),
    ("Hoa", 20),
    ("Hương", 30),
    ("Huyền", 20),
    ("Lan", 25),
    ("Linh", 35),
    ("Loan", 10),
    ("Mai", 25),
    ("My", 15),
    ("Nga", 15),
    ("Ngân", 15),
    ("Ngọc", 20),
    ("Nhung", 15),
    ("Oanh", 10),
    ("Phương", 20),
    ("Quyên", 10),
    ("Tâm", 15),
    ("Thảo", 30),
    ("Trang", 30),
    ("Trinh", 10),
    ("Tuyết", 10),
    ("Vân", 15),
    ("Vy", 20),
    ("Yến", 15),
];

/// Ethnic groups; Kinh is the large majority.
pub const ETHNICITIES: Weighted = &[
    ("Kinh", 8530),
    ("Tày", 190),
    ("Thái", 180),
    ("Mường", 150),
    ("Hoa", 80),
    ("Khmer", 140),
    ("Nùng", 110),
    ("H'Mông", 150),
    ("Dao", 90),
    ("Gia Rai", 50),
    ("Ê Đê", 40),
    ("Chăm", 20),
    ("Ba Na", 30),
    ("Xơ Đăng", 20),
    ("Sán Chay", 20),
];

pub const RELIGIONS: Weighted = &[
    ("Không", 8600),
    ("Phật giáo", 480),
    ("Công giáo", 610),
    ("Tin lành", 100),
    ("Cao Đài", 60),
    ("Phật giáo Hòa Hảo", 140),
    ("Hồi giáo", 10),
];

pub const BLOOD_TYPES: Weighted = &[("O", 42), ("B", 30), ("A", 21), ("AB", 7)];

pub const STREETS: &[&str] = &[
    "Đường Lê Lợi",
    "Đường Nguyễn Huệ",
    "Đường Trần Hưng Đạo",
    "Đường Hai Bà Trưng",
    "Đường Lý Thường Kiệt",
    "Đường Nguyễn Trãi",
    "Đường Phan Chu Trinh",
    "Đường Võ Thị Sáu",
    "Đường Điện Biên Phủ",
    "Đường Cách Mạng Tháng Tám",
    "Đường Nguyễn Thị Minh Khai",
    "Đường Lê Duẩn",
    "Đường Quang Trung",
    "Đường Hùng Vương",
    "Đường 30 Tháng 4",
    "Đường Bạch Đằng",
];

/// Picks a value by weight from a uniformly distributed `roll`.
pub fn pick(list: Weighted, roll: u64) -> &'static str {
    let total: u64 = list.iter().map(|&(_, w)| u64::from(w)).sum();
    let mut r = roll % total.max(1);
    for &(value, weight) in list {
        let w = u64::from(weight);
        if r < w {
            return value;
        }
        r -= w;
    }
    list.first().map(|&(v, _)| v).unwrap_or("")
}
