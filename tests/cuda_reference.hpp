// tests/cuda_reference.hpp: the Eigen backend behind plain functions, for the CUDA tests.
//
// Eigen stays out of nvcc's translation units (Eigen 3.4 under nvcc 13
// warns by the dozen), so cuda_reference.cpp, compiled by g++, holds every call into it and
// test_cuda.cu sees only these declarations. All pointers here are host memory.
#pragma once

#include <muon/muon.hpp>
#include <vector>

namespace muon::test::eigen_reference {

void gemm(float alpha, MatrixStack<const float> a, Transpose ta, MatrixStack<const float> b, Transpose tb, float beta,
          MatrixStack<float> c);
void gram(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c);
void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y);
void normalize(MatrixStack<float> x, float eps, NormEps mode);
void normalize_rows(MatrixStack<float> x, std::span<float> v, RowNormStep s);
void momentum(std::span<float> m, std::span<const float> g, MomentumStep s, std::span<float> u);
void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v, AdamWStep s);
void update(std::span<float> w, std::span<const float> o, UpdateStep s);
double sum_squares(std::span<const float> x);
void orthogonalize(MatrixStack<float> x, const NsOptions& options);
// `steps` optimizer steps on a host parameter table.
void optimizer_steps(std::vector<Parameter> params, const Options& options, int steps);

}  // namespace muon::test::eigen_reference
