"""Nonsense inputs at the Python API are clear errors naming the field, at the call:
shapes that are not shapes, shapes whose byte count overflows 64 bits, max_in_flight=0."""

import unittest

import numpy as np

import tessera
from tessera_test_support import small_client


class ShapeValidationTest(unittest.TestCase):
    def setUp(self):
        self.client = small_client()
        self.addCleanup(self.client.close)

    def block(self):
        return self.client.alloc(4096)  # the client's close() reclaims it

    def test_a_string_or_other_non_shape_is_a_type_error_naming_shape(self):
        b = self.block()
        for bad in ("abc", b"ab", 1.5, None, True, [1, "x"], [2.0, 3], {"a": 1}):
            with self.subTest(shape=bad):
                with self.assertRaises(TypeError) as cm:
                    b.array(np.uint8, bad)
                self.assertIn("shape", str(cm.exception))
                self.assertNotIn("Unable to cast", str(cm.exception))

    def test_out_of_range_dimensions_and_counts_are_value_errors_naming_shape(self):
        b = self.block()
        for bad in ([], [1, 2, 3, 4, 5], [-1], [2 ** 32], 2 ** 40, [2 ** 70]):
            with self.subTest(shape=bad):
                with self.assertRaises(ValueError) as cm:
                    b.array(np.uint8, bad)
                self.assertIn("shape", str(cm.exception))

    def test_numpy_integers_are_dimensions(self):
        b = self.block()
        a = b.array(np.uint8, (np.int64(16), np.uint32(16), 3))
        self.assertEqual(a.shape, (16, 16, 3))

    def test_a_shape_whose_byte_count_wraps_64_bits_is_rejected(self):
        # 4294967295 * 4294967295 * 12288 * 2863311531 is 4096 modulo 2^64: it must not "fit".
        b = self.block()
        wraps = (4294967295, 4294967295, 12288, 2863311531)
        with self.assertRaises(ValueError) as cm:
            b.array(np.uint8, wraps)
        self.assertIn("overflows", str(cm.exception))
        s = self.client.open_stream()
        with self.assertRaises(tessera.TesseraError) as cm:
            self.client.submit(s, b, dtype=np.uint8, shape=wraps)
        self.assertIn("overflows", str(cm.exception))
        self.assertTrue(b.valid, "a refused submit leaves the block with the caller")


class ClientOptionsValidationTest(unittest.TestCase):
    def test_max_in_flight_zero_is_refused_naming_the_field(self):
        with self.assertRaises(tessera.TesseraError) as cm:
            small_client(max_in_flight=0)
        self.assertIn("max_in_flight", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
