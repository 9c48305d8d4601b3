/** A static export: `npm run build` writes dashboard/out, which `kq serve` serves at `/`. */
const nextConfig = {
  output: "export",
  trailingSlash: true,
  images: { unoptimized: true },
  reactStrictMode: true,
};
export default nextConfig;
